"""Checkpoint saves that a kill, a power cut or a full disk cannot turn into a broken file.

A save serializes the state into a temp file in the same folder (named by `entrypoint.naming.temp_path_for`,
which the preflight recognises and F5-TTS's own selection ignores); then, on a background thread, fsyncs it,
checks its zip structure, validates it, renames it over the final name and fsyncs the folder. Until
the rename the previous file is untouched; after it the new one is complete on disk. Before writing, the free
space is compared with the size of the save; a save that cannot fit is skipped with a loud log line and
training goes on with the previous file in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.durable import fsync_folder
from entrypoint.naming import LAST_NAME, numbered_update, temp_path_for

# Room kept free beyond the checkpoint itself: the file system needs a little for metadata, and logs and
# tensorboard events share the disk.
SPACE_MARGIN_BYTES = 1 << 20
SPACE_MARGIN_FRACTION = 0.01

_SYNC_FILE_RANGE_WRITE = 2  # from <linux/fs.h>: start writeback of dirty pages, do not wait
_WRITEBACK_INTERVAL_S = 0.05


class NotValid(OSError):
    """The written temp file fails validation: it was removed, the previous file stays."""


class RenamedNotDurable(OSError):
    """The new file replaced the old one, but the folder fsync failed: the rename may not survive a power cut."""


@dataclass(frozen=True)
class SaveResult:
    """What one save attempt did. `saved` False means the previous file (if any) is still in place."""

    path: Path
    saved: bool
    size: int
    valid: bool
    message: str


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def bytes_needed(expected_size: int) -> int:
    """Free space a save of `expected_size` bytes needs: the old file stays until the rename."""
    return int(expected_size * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES


def estimate_save_size(obj: Any) -> int:
    """Bytes torch.save will write for `obj`: the tensor storages dominate; the pickle is small."""
    import torch

    total = 0
    seen: set[int] = set()

    def walk(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key = storage.data_ptr()
            if key not in seen:
                seen.add(key)
                total += storage.nbytes() + 64  # zip record header and alignment per storage
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(obj)
    return total + (64 << 10)


def zip_structure_cause(path: Path) -> str:
    """'' when `path` is a complete torch zip archive; else the reason in plain words.

    Reads only the end record and the central directory (milliseconds, whatever the size); a truncated or
    zero-filled file has no valid end record, and an entry reaching past the end means a short write.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except zipfile.BadZipFile as error:
        return f"truncated or not a zip archive: {error}"
    except OSError as error:
        return f"cannot read: {error}"
    if not any(entry.filename.endswith("/data.pkl") or entry.filename == "data.pkl" for entry in entries):
        return "not a torch checkpoint: no data.pkl record"
    for entry in entries:
        if entry.header_offset + entry.compress_size > size:
            return f"truncated: record {entry.filename} reaches past the end of the file"
    return ""


def quick_validate(path: Path) -> tuple[bool, str]:
    """Quick (non-deep) validation of a finished checkpoint: the shared validator when present."""
    try:
        from entrypoint.checkpoints.validate import validate_file
    except ImportError:
        cause = zip_structure_cause(path)
        return cause == "", cause
    verdict = validate_file(path, deep=False)
    return bool(verdict.valid), str(verdict.cause)


class _Writeback:
    """Starts writeback of the temp file while torch.save is still writing it.

    Without this the fsync waits for the whole file to reach the disk after torch.save has finished; with it
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


def write_temp(final: Path, write: Callable[[Path], None], *, eager_writeback: bool = False) -> Path:
    """Run `write(temp)` for a new temp file next to `final`; on failure remove it and re-raise.

    eager_writeback starts the disk writes while `write` runs: the file is durable sooner after it returns,
    but `write` itself gets slower when the disk is the bottleneck. Worth it only when someone waits for
    durability right away (the final save before an exit).
    """
    temp = temp_path_for(final)
    if eager_writeback:
        # Create the file first so the writeback helper can follow it; torch.save rewrites the same inode.
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


def commit_temp(temp: Path, final: Path, validate: Callable[[Path], tuple[bool, str]] | None = None) -> int:
    """fsync `temp`, check it is a complete zip (and passes `validate`), rename it over `final`, fsync the
    folder; returns its size.

    Before the rename a failure removes the temp file (it is ours and unfinished) and `final` is untouched;
    a file that fails `validate` raises NotValid. A failing folder fsync after the rename raises
    RenamedNotDurable: `final` is the new file by then.
    """
    try:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        cause = zip_structure_cause(temp)
        if cause:
            raise OSError(errno.EIO, f"the written file is not complete ({cause})")
        if validate is not None:
            valid, cause = validate(temp)
            if not valid:
                raise NotValid(errno.EIO, f"the written file does not validate ({cause})")
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    try:
        fsync_folder(final.parent)
    except OSError as error:
        raise RenamedNotDurable(error.errno, f"folder fsync failed: {error.strerror or error}") from error
    return size


def write_atomically(final: Path, write: Callable[[Path], None]) -> int:
    """Write `final` through a temp file and a rename; the previous `final` survives any failure."""
    return commit_temp(write_temp(final, write, eager_writeback=True), final)


class SafeSaver:
    """Saves checkpoints into one folder atomically, with the disk-space guard and validation.

    `start` serializes the state into a temp file and returns; the commit (fsync, end-record check, rename,
    folder fsync, validation) runs on one background thread, in order, so training does not wait for the
    disk. Until a commit's rename the previous file stays in place; `wait` drains the pending commits.
    """

    def __init__(self, folder: Path, log: Callable[[str], None] = print) -> None:
        self.folder = folder
        self._log = log
        self.last_size = 0  # size of the newest save: the best estimate of the next one
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-commit")
        self._pending: list[Future[SaveResult]] = []

    def start(
        self,
        obj: Any,
        name: str,
        on_done: Callable[[SaveResult], None] | None = None,
        *,
        eager_writeback: bool = False,
    ) -> bool:
        """Write `obj` for `folder/name` now and commit it in the background; False when skipped (logged)."""
        import torch

        final = self.folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        expected = max(self.last_size, estimate_save_size(obj))
        needed = bytes_needed(expected)
        free = free_bytes(self.folder)
        if free < needed:
            self._log(
                f"WARNING: NOT SAVED {name}: {free / 1e6:.1f} MB free in {self.folder}, a save needs about "
                f"{needed / 1e6:.1f} MB; the previous file stays, training goes on -- free some space"
            )
            return False
        try:
            temp = write_temp(final, lambda path: torch.save(obj, str(path)), eager_writeback=eager_writeback)
        except (OSError, RuntimeError) as error:
            # torch reports a full disk as RuntimeError ("file write failed"); both leave the old file.
            self._log(f"WARNING: NOT SAVED {name}: {error}; the previous file stays, training goes on")
            return False
        self._pending = [future for future in self._pending if not future.done()]
        self._pending.append(self._committer.submit(self._commit, temp, final, on_done))
        return True

    def _commit(self, temp: Path, final: Path, on_done: Callable[[SaveResult], None] | None) -> SaveResult:
        # Validated before the rename: a bad new file must never replace the good previous one.
        try:
            size = commit_temp(temp, final, validate=quick_validate)
        except RenamedNotDurable as error:
            # The rename happened: the new, validated file is in place; only its durability is in doubt.
            size = final.stat().st_size if final.exists() else 0
            self.last_size = size or self.last_size
            message = (
                f"saved {final.name} (it replaced the previous file) but {error}: after a power cut the "
                "previous file may come back; training goes on"
            )
            self._log(f"WARNING: {message}")
            result = SaveResult(final, True, size, True, message)
        except NotValid as error:
            message = f"NOT SAVED {final.name}: {error}; the previous file stays, training goes on"
            self._log(f"ERROR: {message}")
            result = SaveResult(final, False, 0, False, message)
        except OSError as error:
            message = f"NOT SAVED {final.name}: {error}; the previous file stays, training goes on"
            self._log(f"WARNING: {message}")
            result = SaveResult(final, False, 0, False, message)
        else:
            self.last_size = size
            result = SaveResult(final, True, size, True, "")
        if on_done is not None:
            try:
                on_done(result)
            except Exception as error:  # a failing follow-up (backup, rotation) must not hide the save
                self._log(f"WARNING: after saving {final.name}: {error!r}")
        return result

    def wait(self) -> list[SaveResult]:
        """Block until every pending commit is done; their results, oldest first."""
        results = [future.result() for future in self._pending]
        self._pending = []
        return results

    def save(self, obj: Any, name: str) -> SaveResult:
        """Save and wait for the commit: the synchronous form of `start`."""
        self.wait()
        if not self.start(obj, name, eager_writeback=True):
            return SaveResult(self.folder / name, False, 0, False, "not saved (see the log)")
        return self.wait()[-1]

    def close(self) -> None:
        self.wait()
        self._committer.shutdown(wait=True)


def numbered_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(update, path) of every `model_<N>.pt` in `folder`, oldest first."""
    found = []
    for entry in os.scandir(folder):
        update = numbered_update(entry.name)
        if update is not None and entry.name.endswith(".pt") and entry.name != LAST_NAME:
            found.append((update, Path(entry.path)))
    return sorted(found)


def rotate_numbered(
    folder: Path, keep: int, newest_valid: Path, log: Callable[[str], None] = print
) -> list[Path]:
    """Remove the oldest `model_<N>.pt` beyond `keep`; `newest_valid` (just saved and validated) never goes.

    keep < 0 keeps everything. Only numbered checkpoints older than `newest_valid` are candidates, so a
    newer file that failed validation can never push the last good one out.
    """
    if keep < 0:
        return []
    newest_update = numbered_update(newest_valid.name)
    checkpoints = numbered_checkpoints(folder)
    older = [path for update, path in checkpoints if newest_update is None or update < newest_update]
    newer_or_same = len(checkpoints) - len(older)
    removable = len(older) + newer_or_same - max(keep, 1)
    removed = []
    for path in older[: max(removable, 0)]:
        try:
            path.unlink()
        except OSError as error:
            log(f"WARNING: could not remove old checkpoint {path.name}: {error}")
            continue
        removed.append(path)
        log(f"Removed old checkpoint: {path.name} (KEEP_CHECKPOINTS={keep})")
    return removed
