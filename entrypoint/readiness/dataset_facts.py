"""What the prepared dataset holds, read once for every readiness check: durations and text tokens.

`duration.json` is plain JSON. `raw.arrow` (an Arrow stream written by F5-TTS's prepare_csv_wavs through
`datasets`) is read with pyarrow and numpy when they can be imported, memory-mapped and column-wise: the
text column becomes one table of distinct tokens with their counts and the first row that uses each, which
is all the vocabulary and text checks need, even for 100,000 clips. Without pyarrow the text is skipped and
the checks say so.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAW_ARROW = "raw.arrow"
DURATION_JSON = "duration.json"


class DatasetUnreadable(Exception):
    """duration.json cannot be used: the batch plan cannot be computed."""


@dataclass
class TextFacts:
    """The text column as F5-TTS's tokenizer sees it: each row is a list of tokens (characters or pinyin
    syllables), and each token is looked up whole in the vocabulary."""

    rows: int
    counts: dict[str, int]  # token -> occurrences
    first_row: dict[str, int]  # token -> first row that uses it
    tokens_per_row: list[int]
    _column: Any = field(repr=False, default=None)  # the Arrow column, for example texts

    def text_of(self, row: int) -> str:
        value = self._column[row].as_py()
        return value if isinstance(value, str) else "".join(value or [])

    def rows_using(self, tokens: set[str]) -> int:
        """How many rows contain at least one of `tokens`."""
        if not tokens:
            return 0
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self._column
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            flat = pc.list_flatten(column)
            parents = pc.list_parent_indices(column)
            hits = pc.filter(parents, pc.is_in(flat, value_set=pa.array(sorted(tokens))))
            return len(pc.unique(hits))
        return sum(1 for text in column.to_pylist() if text and any(token in text for token in tokens))


@dataclass
class DatasetFacts:
    folder: Path
    durations: list[float]  # duration.json: what F5-TTS's sampler sizes batches with
    row_durations: list[float] | None = None  # raw.arrow's duration column: what CustomDataset filters by
    audio_paths: Any = None  # raw.arrow's audio_path column (Arrow), for naming clips
    text: TextFacts | None = None
    text_skipped: str = ""  # why `text` is None

    def audio_path(self, row: int) -> str | None:
        if self.audio_paths is None or row >= len(self.audio_paths):
            return None
        return str(self.audio_paths[row].as_py())


def read_durations(path: Path) -> list[float]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))["duration"]
        durations = [float(value) for value in values]
    except FileNotFoundError:
        raise DatasetUnreadable(f"{path} does not exist") from None
    except OSError as error:
        raise DatasetUnreadable(f"{path} cannot be read: {error.strerror or error}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetUnreadable(f"{path} is not a duration file of prepare_csv_wavs ({error})") from None
    return durations


def probe_dataset(folder: Path, *, read_text: bool = True) -> DatasetFacts:
    """Raises DatasetUnreadable when duration.json cannot be used; a raw.arrow that cannot be read only
    leaves `text` empty with the reason in `text_skipped`."""
    facts = DatasetFacts(folder, read_durations(folder / DURATION_JSON))
    if not read_text:
        facts.text_skipped = "not asked for"
        return facts
    try:
        import numpy  # noqa: F401 - the token table is built with numpy
        import pyarrow as pa
    except ImportError:
        facts.text_skipped = "pyarrow/numpy are not installed here (they are in the trainer's environment)"
        return facts
    try:
        table = pa.ipc.open_stream(pa.memory_map(str(folder / RAW_ARROW))).read_all()
    except (OSError, pa.ArrowException) as error:
        facts.text_skipped = f"{folder / RAW_ARROW} cannot be read as an Arrow stream ({error})"
        return facts
    names = set(table.column_names)
    if "text" not in names:
        facts.text_skipped = f"{folder / RAW_ARROW} has no text column (columns: {', '.join(sorted(names))})"
        return facts
    if "duration" in names:
        facts.row_durations = table.column("duration").to_pylist()
    if "audio_path" in names:
        facts.audio_paths = table.column("audio_path").combine_chunks()
    facts.text = _text_facts(table.column("text").combine_chunks())
    return facts


def _text_facts(column: Any) -> TextFacts:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(column)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        # A plain string per row (a dataset not made by prepare_csv_wavs): F5-TTS iterates its characters.
        counts: Counter[str] = Counter()
        first: dict[str, int] = {}
        lengths = []
        for index, text in enumerate(column.to_pylist()):
            text = text or ""
            lengths.append(len(text))
            for token in set(text) - first.keys():
                first[token] = index
            counts.update(text)
        return TextFacts(rows, dict(counts), first, lengths, column)
    flat = pc.list_flatten(column)
    lengths = pc.list_value_length(column).fill_null(0).to_pylist()
    if len(flat) == 0:
        return TextFacts(rows, {}, {}, lengths, column)
    encoded = flat.dictionary_encode()
    tokens = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    counts_array = np.bincount(codes, minlength=len(tokens))
    # Dictionary codes are handed out in order of first appearance, so the first position of each code is
    # where the running maximum grows.
    running = np.maximum.accumulate(codes)
    starts = np.flatnonzero(np.diff(running, prepend=-1) > 0)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    first_rows = parents[starts]
    return TextFacts(
        rows,
        {token: int(n) for token, n in zip(tokens, counts_array, strict=True)},
        {token: int(row) for token, row in zip(tokens, first_rows, strict=True)},
        lengths,
        column,
    )
