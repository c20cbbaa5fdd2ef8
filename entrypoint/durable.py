"""Small durable-write primitives shared by the preflight and the trainer: a rename is only a commit once
the data and the folder entry are on disk."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from entrypoint.naming import temp_path_for


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_via_temp(path: Path, write: Callable[[Path], None]) -> None:
    """Replace `path` with what `write(temp)` puts into a temp file in the same folder, fsynced and renamed:
    a reader sees the old or the new content, never a mix. Raises OSError; the temp file is removed on
    failure."""
    temp = temp_path_for(path)
    try:
        write(temp)
        fsync_path(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_folder(path.parent)


def replace_text(path: Path, text: str) -> None:
    """Replace `path` with `text` durably (see replace_via_temp)."""
    replace_via_temp(path, lambda temp: temp.write_text(text, encoding="utf-8"))
