"""Verified copies of model_last.pt in BACKUP_DIR, named model_<update>.pt, the newest BACKUP_KEEP kept.

On the same file system a backup is a hard link: instant whatever the size, and safe because every save
replaces model_last.pt by renaming a new file over it, so the linked inode is never written again. On
another file system (the better place: another disk) it is a durable copy (`entrypoint.durable.copy_file`)
that gives way to a stop request between chunks.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from entrypoint.durable import CopyAborted, copy_file, link_file
from entrypoint.train.checkpoint_manager import Log, quick_validate, remove_oldest, say


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
                link_file(source, final)
                method = "hard link"
            except OSError as error:
                # Two bind mounts of one file system share st_dev, yet Linux refuses links between them.
                if error.errno != errno.EXDEV:
                    raise
        if not method:
            if not allow_copy:
                return BackupResult(final, False, "", "backup copy skipped while stopping")
            copy_file(source, final, should_abort=should_abort, validate=quick_validate)
            method = "copy"
    except CopyAborted:
        return BackupResult(final, False, "", "backup copy abandoned for the stop; the previous backups stay")
    except OSError as error:
        return BackupResult(final, False, "", f"backup of {source.name} failed: {error}")
    if method == "hard link":
        # A link shares the validated file's data; a copy was validated before its rename.
        valid, cause = quick_validate(final)
        if not valid:
            return BackupResult(final, False, method, f"backup {final} does not validate: {cause}")
    return BackupResult(final, True, method, "")


class BackupPolicy:
    """Decides when a "last" save gets a backup and keeps BACKUP_KEEP of them."""

    def __init__(
        self,
        backup_dir: Path,
        every_updates: int,
        keep: int,
        log: Log = say,
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
        remove_oldest(
            self.backup_dir, max(self.keep, 1), result.path, self._log, what="backup", setting="BACKUP_KEEP"
        )
        return result
