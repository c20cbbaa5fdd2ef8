"""What the prepared dataset holds, read once for every readiness check: durations and text tokens.

`duration.json` is plain JSON. `raw.arrow` (an Arrow stream written by F5-TTS's prepare_csv_wavs through
`datasets`) is read with pyarrow when it can be imported, memory-mapped and column-wise: the text column
becomes one table of distinct tokens with their counts (the first row that uses a token is looked up only
for the few tokens shown as examples), which is all the vocabulary and text checks need, even for 100,000
clips. Without pyarrow the text is skipped and
the checks say so.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAW_ARROW = "raw.arrow"
DURATION_JSON = "duration.json"
ARROW_STREAM_START = b"\xff\xff\xff\xff"  # an Arrow IPC stream's first message: continuation marker


class DatasetUnreadable(Exception):
    """duration.json cannot be used: the batch plan cannot be computed."""


@dataclass
class TextFacts:
    """The text column as F5-TTS's tokenizer sees it: each row is a list of tokens (characters or pinyin
    syllables), and each token is looked up whole in the vocabulary."""

    rows: int
    counts: dict[str, int]  # token -> occurrences
    first_row: Mapping[str, int]  # token -> first row that uses it
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
        if not _is_list(column.type):
            return sum(1 for text in column.to_pylist() if text and any(token in text for token in tokens))
        wanted = pa.array(sorted(tokens), type=pa.string())
        rows = 0
        for chunk in column.chunks:
            hits = pc.is_in(pc.list_flatten(chunk), value_set=wanted)
            if pc.any(hits).as_py():
                rows += len(pc.unique(pc.filter(pc.list_parent_indices(chunk), hits)))
        return rows


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
    arrow = folder / RAW_ARROW
    try:
        with open(arrow, "rb") as handle:
            head = handle.read(len(ARROW_STREAM_START))
    except OSError as error:
        facts.text_skipped = f"{arrow} cannot be read: {error.strerror or error}"
        return facts
    if head != ARROW_STREAM_START:
        # Not worth importing pyarrow for (it takes a while): datasets writes raw.arrow as an Arrow stream.
        facts.text_skipped = f"{arrow} is not an Arrow stream as prepare_csv_wavs writes it"
        return facts
    try:
        import pyarrow as pa
    except ImportError:
        facts.text_skipped = "pyarrow is not installed here (they are in the trainer's environment)"
        return facts
    try:
        table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
    except (OSError, pa.ArrowException) as error:
        facts.text_skipped = f"{arrow} cannot be read as an Arrow stream ({error})"
        return facts
    names = set(table.column_names)
    if "text" not in names:
        facts.text_skipped = f"{folder / RAW_ARROW} has no text column (columns: {', '.join(sorted(names))})"
        return facts
    if "duration" in names:
        facts.row_durations = table.column("duration").to_pylist()
    if "audio_path" in names:
        facts.audio_paths = table.column("audio_path")
    facts.text = _text_facts(table.column("text"))
    return facts


class _FirstRows:
    """token -> the first row that uses it, found when asked (only a few tokens ever need an example)."""

    def __init__(self, column: Any) -> None:
        self._column = column
        self._found: dict[str, int] = {}

    def __getitem__(self, token: str) -> int:
        if token not in self._found:
            import pyarrow.compute as pc

            offset = 0
            for chunk in self._column.chunks:
                position = pc.index(pc.list_flatten(chunk), token).as_py()
                if position >= 0:
                    parents = pc.list_parent_indices(chunk)
                    self._found[token] = offset + parents[position].as_py()
                    break
                offset += len(chunk)
            else:
                raise KeyError(token)
        return self._found[token]


def _text_facts(column: Any) -> TextFacts:
    """Counts in one pass of Arrow's own kernels over the chunks as they lie in the memory-mapped file (no
    copy of the whole column, no Python object per token)."""
    import pyarrow.compute as pc

    rows = len(column)
    if not _is_list(column.type):
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
    frequencies = pc.value_counts(pc.list_flatten(column))
    counts_by_token = dict(
        zip(frequencies.field("values").to_pylist(), frequencies.field("counts").to_pylist(), strict=True)
    )
    counts_by_token.pop(None, None)
    lengths = pc.list_value_length(column).fill_null(0).to_pylist()
    return TextFacts(rows, counts_by_token, _FirstRows(column), lengths, column)  # type: ignore[arg-type]


def _is_list(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type))
