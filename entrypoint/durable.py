"""The one durable-write primitive of the project: write a temp file next to the target, fsync it, check it,
rename it into place, fsync the folder. A reader sees the old file or the complete new one, never a mix, and
after a power cut the new name does not point at missing data.

Every writer uses it: the trainer's checkpoint saves (`write_temp` on the training thread, `commit_temp` on
the commit thread), backup copies and links, the preflight's copies (`copy_file`) and text files
(`replace_text`). Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from entrypoint.naming import temp_path_for

# The stop request of an abortable copy is checked between chunks: a stop waits at most one chunk.
COPY_CHUNK_BYTES = 64 << 20

_SYNC_FILE_RANGE_WRITE = 2  # from <linux/fs.h>: start writeback of dirty pages, do not wait
_WRITEBACK_INTERVAL_S = 0.05

Validator = Callable[[Path], tuple[bool, str]]


class NotValid(OSError):
    """The written temp file fails validation: it was removed, the previous file stays."""


class RenamedNotDurable(OSError):
    """The new file replaced the old one, but the folder fsync failed: the rename may not survive a power cut."""


class CopyAborted(OSError):
    """A copy gave way to a stop request; its temp file is removed, the target is untouched."""


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


def write_temp(final: Path, write: Callable[[Path], None], *, eager_writeback: bool = False) -> Path:
    """Run `write(temp)` for a new temp file next to `final` and return the temp path; on failure the temp
    file is removed and the error re-raised.

    eager_writeback starts the disk writes while `write` runs: the file is durable sooner after it returns,
    but `write` itself gets slower when the disk is the bottleneck. Worth it only when someone waits for
    durability right away (a save before an exit).
    """
    temp = temp_path_for(final)
    if eager_writeback:
        # Create the file first so the writeback helper can follow it; the writer rewrites the same inode.
        with open(temp, "xb"):
            pass
    try:
        with _Writeback(temp) if eager_writeback else contextlib.nullcontext():
            write(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return temp


def commit_temp(
    temp: Path,
    final: Path,
    validate: Validator | None = None,
    *,
    rename: Callable[[Path, Path], None] = os.replace,
) -> int:
    """fsync `temp`, check it with `validate`, rename it to `final`, fsync the folder; returns its size.

    Before the rename a failure removes the temp file (it is ours and unfinished) and `final` is untouched;
    a file that fails `validate` raises NotValid. A failing folder fsync after the rename raises
    RenamedNotDurable: `final` is the new file by then. `rename` may refuse to replace (see copy_file).
    """
    try:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if validate is not None:
            valid, cause = validate(temp)
            if not valid:
                raise NotValid(errno.EIO, f"the written file does not validate ({cause})")
        rename(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    try:
        fsync_folder(final.parent)
    except OSError as error:
        raise RenamedNotDurable(error.errno, f"folder fsync failed: {error.strerror or error}") from error
    return size


def replace_via_temp(
    path: Path,
    write: Callable[[Path], None],
    validate: Validator | None = None,
    *,
    eager_writeback: bool = False,
) -> int:
    """Replace `path` with what `write(temp)` puts into a temp file (see write_temp and commit_temp)."""
    return commit_temp(write_temp(path, write, eager_writeback=eager_writeback), path, validate)


def replace_text(path: Path, text: str) -> None:
    """Replace `path` with `text` durably."""
    replace_via_temp(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def copy_file(
    source: Path,
    target: Path,
    *,
    replace: bool = True,
    should_abort: Callable[[], bool] | None = None,
    validate: Validator | None = None,
) -> int:
    """Copy `source` to `target` durably; returns the size.

    replace=False never replaces an existing `target` (FileExistsError instead). `should_abort` is asked
    before each chunk; when it returns True the copy stops with CopyAborted and `target` is untouched.
    Copying the file onto itself (its own private copy, breaking hard links) is allowed.
    """
    size = source.stat().st_size
    temp = write_temp(target, lambda temp: _copy_chunks(source, temp, size, should_abort))
    return commit_temp(temp, target, validate, rename=os.replace if replace else _rename_no_replace)


def link_file(source: Path, target: Path) -> None:
    """Make `target` a hard link to `source`, replacing `target`, and fsync the folder. An OSError with
    EXDEV means the two folders cannot share a file (another file system, or two mounts of one)."""
    # Link under a temp name first: os.link cannot replace an existing name, a rename can.
    temp = temp_path_for(target)
    os.link(source, temp)
    try:
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_folder(target.parent)


def _copy_chunks(source: Path, temp: Path, size: int, should_abort: Callable[[], bool] | None) -> None:
    with open(source, "rb") as reader, open(temp, "wb") as writer:
        offset = 0
        while offset < size:
            if should_abort is not None and should_abort():
                raise CopyAborted(errno.ECANCELED, "stop requested, copy abandoned")
            # copy_file_range stays in the kernel (and may reflink); fall back to read/write.
            try:
                sent = os.copy_file_range(
                    reader.fileno(), writer.fileno(), min(COPY_CHUNK_BYTES, size - offset)
                )
            except OSError:
                sent = 0
            if sent == 0:
                reader.seek(offset)
                chunk = reader.read(COPY_CHUNK_BYTES)
                if not chunk:
                    break
                writer.seek(offset)
                writer.write(chunk)
                writer.flush()
                sent = len(chunk)
            offset += sent
    copied = temp.stat().st_size
    if copied != size:
        raise OSError(errno.EIO, f"copy of {source.name} is {copied} bytes, expected {size}")


def _rename_no_replace(source: Path, target: Path) -> None:
    from entrypoint.checkpoints.quarantine import rename_no_replace

    rename_no_replace(source, target)


class _Writeback:
    """Starts writeback of a file while it is still being written.

    Without this the fsync waits for the whole file to reach the disk after the writer has finished; with it
    the disk writes in parallel and the fsync waits only for the tail. Linux only; elsewhere it does nothing
    and the fsync does all the work.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync_file_range = _load_sync_file_range()

    def __enter__(self) -> _Writeback:
        if self._sync_file_range is not None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-writeback", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sync_file_range is not None
        while not self._stop.wait(_WRITEBACK_INTERVAL_S):
            self._sync_file_range(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        os.close(self._fd)


def _load_sync_file_range() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
