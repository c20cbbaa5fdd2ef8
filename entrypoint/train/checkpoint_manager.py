"""Every save decision of the trainer: which file, when, whether it fits, what it replaces, what is removed.

A save serializes the state into a temp file in the checkpoint folder (on the training thread); then, on one
background thread and in order, the file is fsynced, validated, renamed over its final name and the folder
fsynced (`entrypoint.durable`). Until the rename the previous file is untouched; after it the new one is
complete on disk. Before writing, the free space is compared with the size of the save: a save that cannot
fit is skipped with a loud line and training goes on with the previous file in place.

`CheckpointManager` adds the policy: model_last.pt and numbered model_<N>.pt saves, one retry of a final save
whose commit failed, retention of numbered checkpoints, backups after a save of model_last.pt, and the save
when a stop is requested. Nothing here knows F5-TTS: the state to save is passed in as a callable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entrypoint.durable import NotValid, RenamedNotDurable, Validator, commit_temp, write_temp
from entrypoint.naming import LAST_NAME, numbered_update

if TYPE_CHECKING:
    from entrypoint.train.backups import BackupPolicy

# Room kept free beyond the checkpoint itself: the file system needs a little for metadata, and logs and
# tensorboard events share the disk.
SPACE_MARGIN_BYTES = 1 << 20
SPACE_MARGIN_FRACTION = 0.01

Log = Callable[[str], None]
State = Callable[[int], dict[str, Any]]  # the state to save at an update


def say(line: str) -> None:
    """The default log: stdout, flushed at once (the log tee and `docker logs` show it as it happens)."""
    print(line, flush=True)


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


def quick_validate(path: Path) -> tuple[bool, str]:
    """The preflight's quick validation (zip structure and the F5-TTS keys): what a save must pass before it
    may replace the previous file, so the next start does not quarantine it."""
    from entrypoint.checkpoints.validate import validate_file

    verdict = validate_file(path, deep=False)
    return bool(verdict.valid), str(verdict.cause)


class CheckpointWriter:
    """Saves checkpoints into one folder: serialize now, commit (fsync, validate, rename, folder fsync) on one
    background thread in order, so training does not wait for the disk; `wait` drains the pending commits."""

    def __init__(self, folder: Path, log: Log = say, validate: Validator = quick_validate) -> None:
        self.folder = folder
        self._log = log
        self._validate = validate
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
        needed = bytes_needed(max(self.last_size, estimate_save_size(obj)))
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
        result = self._commit_result(temp, final)
        if on_done is not None:
            try:
                on_done(result)
            except Exception as error:  # a failing follow-up (backup, rotation) must not hide the save
                self._log(f"WARNING: after saving {final.name}: {error!r}")
        return result

    def _commit_result(self, temp: Path, final: Path) -> SaveResult:
        # Validated before the rename: a bad new file must never replace the good previous one.
        try:
            size = commit_temp(temp, final, self._validate)
        except RenamedNotDurable as error:
            # The rename happened: the new, validated file is in place; only its durability is in doubt.
            size = final.stat().st_size if final.exists() else 0
            self.last_size = size or self.last_size
            message = (
                f"saved {final.name} (it replaced the previous file) but {error}: after a power cut the "
                "previous file may come back; training goes on"
            )
            self._log(f"WARNING: {message}")
            return SaveResult(final, True, size, True, message)
        except OSError as error:
            message = f"NOT SAVED {final.name}: {error}; the previous file stays, training goes on"
            self._log(f"{'ERROR' if isinstance(error, NotValid) else 'WARNING'}: {message}")
            return SaveResult(final, False, 0, False, message)
        self.last_size = size
        return SaveResult(final, True, size, True, "")

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


def remove_oldest(
    folder: Path,
    keep: int,
    newest_valid: Path,
    log: Log = say,
    *,
    what: str = "checkpoint",
    setting: str = "KEEP_CHECKPOINTS",
) -> list[Path]:
    """Retention, for numbered checkpoints and backups alike: remove the oldest `model_<N>.pt` in `folder`
    beyond `keep` (keep < 0: keep everything). `newest_valid` (just saved and validated) never goes, and
    only files older than it are candidates, so newer files that failed validation cannot push it out."""
    if keep < 0:
        return []
    newest_update = numbered_update(newest_valid.name)
    checkpoints = numbered_checkpoints(folder)
    older = [path for update, path in checkpoints if newest_update is None or update < newest_update]
    removable = len(checkpoints) - max(keep, 1)
    removed = []
    for path in older[: max(removable, 0)]:
        try:
            path.unlink()
        except OSError as error:
            log(f"WARNING: could not remove old {what} {path.name}: {error}")
            continue
        removed.append(path)
        log(f"Removed old {what}: {path.name} ({setting}={keep})")
    return removed


class CheckpointManager:
    """The trainer's saves: model_last.pt, numbered checkpoints with retention, backups, the final save.

    Call it on the main process only (the other processes save nothing). The state is passed as a callable
    so it is only gathered when a save really starts.
    """

    def __init__(
        self,
        folder: Path,
        *,
        keep_numbered: int,
        backups: BackupPolicy | None = None,
        stopping: Callable[[], bool] = lambda: False,
        log: Log = say,
        validate: Validator = quick_validate,
    ) -> None:
        self.folder = folder
        self.keep_numbered = keep_numbered  # 0: no numbered saves, < 0: keep all (as F5-TTS)
        self.backups = backups
        self._stopping = stopping
        self._log = log
        self.writer = CheckpointWriter(folder, log, validate)
        self.last_saved_update: int | None = None  # newest model_last.pt that is durable and valid
        self.last_started_update: int | None = None  # newest model_last.pt written, maybe not committed

    def save_numbered(self, update: int, state: State) -> bool:
        """Start a save of model_<update>.pt; older ones beyond KEEP_CHECKPOINTS go once it is committed."""
        if self.keep_numbered == 0:
            return False

        def saved(result: SaveResult) -> None:
            if result.saved and result.valid:
                self._log(f"Saved checkpoint model_{update}.pt")
                remove_oldest(self.folder, self.keep_numbered, result.path, self._log)

        return self.writer.start(state(update), f"model_{update}.pt", saved)

    def save_last(self, update: int, state: State) -> bool:
        """Start a save of model_last.pt at `update`, unless one at this update was started already."""
        if self.last_started_update == update:
            return True  # the loop's own save at this update already wrote it (ensure_last retries it)
        return self._start_last(update, state)

    def _start_last(self, update: int, state: State) -> bool:
        def saved(result: SaveResult) -> None:  # on the commit thread, once the file is durable
            if not (result.saved and result.valid):
                return
            self.last_saved_update = update
            self._log(f"Saved last checkpoint at update {update}")
            if self.backups is not None:
                self.backups.after_last_save(result.path, update, stopping=self._stopping())

        # When stopping, the exit waits for this file to be durable: start the disk writes at once.
        if self.writer.start(state(update), LAST_NAME, saved, eager_writeback=self._stopping()):
            self.last_started_update = update
            return True
        return False

    def ensure_last(self, update: int, state: State) -> bool:
        """Save model_last.pt at `update` (unless started already) and wait until it is durable; one retry
        when the commit of an already-started save failed. True when model_last.pt holds `update`."""
        self.save_last(update, state)
        self.writer.wait()
        if self.last_saved_update != update and self.last_started_update == update:
            # Started but not committed (a failed fsync, validation or rename): not done.
            self.last_started_update = None
            self._log(f"Retrying the save of model_last.pt at update {update}")
            self._start_last(update, state)
            self.writer.wait()
        if self.last_saved_update != update:
            self._log(
                f"WARNING: model_last.pt could not be saved at update {update}; the newest saved "
                f"state is update {self.last_saved_update} (see the lines above)"
            )
            return False
        return True

    def save_on_stop(self, update: int, state: State, reason: str) -> bool:
        """The save when training stops (a signal, MAX_UPDATES) at `update`: model_last.pt, durable before
        the process exits; backups made meanwhile are hard links only (see BackupPolicy)."""
        if self.last_started_update != update:
            self._log(f"Stopping ({reason}) at update {update}: saving model_last.pt")
        return self.ensure_last(update, state)

    def wait(self) -> list[SaveResult]:
        return self.writer.wait()

    def close(self) -> None:
        """Every pending commit reaches the disk."""
        self.writer.close()
