"""The vocabulary file, read exactly as F5-TTS's `get_tokenizer` reads it. Torch-free.

One reader for the preflight (shape check against the checkpoint) and the trainer (the model's text
embedding): two readers that split lines differently would let the check and the model disagree.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from entrypoint.checkpoints.regular_file import open_regular


def read_vocabulary(path: Path) -> dict[str, int]:
    """Symbol -> index as F5-TTS builds it: text-mode line iteration, each line minus its last character.

    Duplicated lines collapse onto the later index, as in F5-TTS; the model's embedding has len() rows.
    Raises OSError or UnicodeDecodeError when the file cannot be read.
    """
    # Never a plain open(): a FIFO named vocab.txt would block the preflight forever.
    with open_regular(path) as raw, io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8") as handle:
        return _from_lines(handle)


def vocabulary_from_text(text: str) -> dict[str, int]:
    """The same for a file's text already read in text mode: lines end where text-mode reading ends them,
    never at a form feed or another character `str.splitlines` would split at."""
    return _from_lines(io.StringIO(text, newline=None))


def _from_lines(lines: Iterable[str]) -> dict[str, int]:
    return {line[:-1]: index for index, line in enumerate(lines)}


def vocabulary_size(path: Path) -> int:
    return len(read_vocabulary(path))
