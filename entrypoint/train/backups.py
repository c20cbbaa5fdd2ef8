"""Verified copies of model_last.pt in BACKUP_DIR, named model_<update>.pt, the newest BACKUP_KEEP kept.

On the same file system a backup is a hard link: instant whatever the size, and safe because every save
replaces model_last.pt by renaming a new file over it, so the linked inode is never written again. On
another file system (the better place: another disk) it is a copy to a temp name, fsync, rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from entrypoint.naming import numbered_update, temp_path_for
from entrypoint.train.safe_save import fsync_folder, quick_validate

_COPY_CHUNK = 64 << 20  # the stop request is checked between chunks: a stop waits at most one chunk


class CopyAborted(OSError):
    """A backup copy gave way to a stop request; its temp file is removed, the previous backups stay."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    made: bool
    method: str  # "hard link" | "copy" | ""
    message: str


def backup_name(update: int) -> str:
    return f"model_{update}.pt"


def same_file_system(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _copy_durably(source: Path, final: Path, should_abort: Callable[[], bool] | None = None) -> None:
    temp = temp_path_for(final)
    try:
        with open(source, "rb") as reader, open(temp, "xb") as writer:
            size = os.fstat(reader.fileno()).st_size
            offset = 0
            while offset < size:
                if should_abort is not None and should_abort():
                    raise CopyAborted(errno.ECANCELED, "stop requested, copy abandoned")
                # copy_file_range stays in the kernel (and may reflink); fall back to read/write.
                try:
                    sent = os.copy_file_range(
                        reader.fileno(), writer.fileno(), min(_COPY_CHUNK, size - offset)
                    )
                except OSError:
                    sent = 0
                if sent == 0:
                    reader.seek(offset)
                    chunk = reader.read(_COPY_CHUNK)
                    if not chunk:
                        break
                    writer.seek(offset)
                    writer.write(chunk)
                    writer.flush()
                    sent = len(chunk)
                offset += sent
            writer.flush()
            os.fsync(writer.fileno())
        if temp.stat().st_size != size:
            raise OSError(f"copy of {source.name} is {temp.stat().st_size} bytes, expected {size}")
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _link_durably(source: Path, final: Path) -> None:
    # Link under a temp name first: os.link cannot replace an existing name, a rename can.
    temp = temp_path_for(final)
    os.link(source, temp)
    try:
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def make_backup(
    source: Path,
    backup_dir: Path,
    update: int,
    *,
    allow_copy: bool = True,
    should_abort: Callable[[], bool] | None = None,
) -> BackupResult:
    """Back up `source` (a saved, validated model_last.pt) as backup_dir/model_<update>.pt.

    A copy checks `should_abort` before each chunk and gives up when it returns True (a stop request):
    the stop then waits for one chunk at most, not the whole copy.
    """
    final = backup_dir / backup_name(update)
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        if backup_dir.resolve() == source.parent.resolve():
            return BackupResult(
                final, False, "", "BACKUP_DIR is the checkpoint folder itself; no backup made"
            )
        method = ""
        if same_file_system(source, backup_dir):
            try:
                _link_durably(source, final)
                method = "hard link"
            except OSError as error:
                # Two bind mounts of one file system share st_dev, yet Linux refuses links between them.
                if error.errno != errno.EXDEV:
                    raise
        if not method:
            if not allow_copy:
                return BackupResult(final, False, "", "backup copy skipped while stopping")
            _copy_durably(source, final, should_abort)
            method = "copy"
        fsync_folder(backup_dir)
    except CopyAborted:
        return BackupResult(final, False, "", "backup copy abandoned for the stop; the previous backups stay")
    except OSError as error:
        return BackupResult(final, False, "", f"backup of {source.name} failed: {error}")
    valid, cause = quick_validate(final)
    if not valid:
        return BackupResult(final, False, method, f"backup {final} does not validate: {cause}")
    return BackupResult(final, True, method, "")


def rotate_backups(
    backup_dir: Path, keep: int, newest: Path, log: Callable[[str], None] = print
) -> list[Path]:
    """Remove the oldest model_<N>.pt backups beyond `keep`; `newest` (just made and verified) stays."""
    newest_update = numbered_update(newest.name)
    backups = sorted(
        (update, Path(entry.path))
        for entry in os.scandir(backup_dir)
        if (update := numbered_update(entry.name)) is not None and entry.name.endswith(".pt")
    )
    older = [path for update, path in backups if newest_update is None or update < newest_update]
    excess = len(backups) - max(keep, 1)
    removed = []
    for path in older[: max(excess, 0)]:
        try:
            path.unlink()
        except OSError as error:
            log(f"WARNING: could not remove old backup {path.name}: {error}")
            continue
        removed.append(path)
    return removed


class BackupPolicy:
    """Decides when a "last" save gets a backup and keeps BACKUP_KEEP of them."""

    def __init__(
        self,
        backup_dir: Path,
        every_updates: int,
        keep: int,
        log: Callable[[str], None] = print,
        should_abort: Callable[[], bool] | None = None,
    ) -> None:
        self.backup_dir = backup_dir
        self.every_updates = every_updates
        self.keep = keep
        self._log = log
        self._should_abort = should_abort

    def due(self, update: int) -> bool:
        return self.every_updates > 0 and update > 0 and update % self.every_updates == 0

    def after_last_save(self, last_path: Path, update: int, *, stopping: bool = False) -> BackupResult | None:
        """Back up a just-saved model_last.pt when due. While stopping, only an instant hard link is made."""
        if not self.due(update):
            return None
        result = make_backup(
            last_path, self.backup_dir, update, allow_copy=not stopping, should_abort=self._should_abort
        )
        if not result.made:
            self._log(f"WARNING: {result.message}")
            return result
        self._log(f"Backup at update {update}: {result.path} ({result.method})")
        rotate_backups(self.backup_dir, self.keep, result.path, self._log)
        return result
