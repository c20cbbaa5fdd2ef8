"""What `preflight run` changes on disk: a list of actions, planned first, then done in order and recorded.

The plan (plan.py, checkpoints/resolve.py) only reads; it returns these actions. `preflight check` prints them
and changes nothing; `preflight run` performs exactly the same list, in order, recording each outcome as it
happens. No action deletes user data: a quarantine is a rename plus a reason file, an install is a link or a
durable copy, the only removal is of the project's own unfinished temp files (recognised by name).

An action marked `required` must succeed for training to start safely (the chosen file placed, the lock
taken, a folder created): when one fails, the actions after it are not done and the run stops (exit 3).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint import naming
from entrypoint.durable import fsync_folder

LOCK = "lock"  # take OUTPUT_DIR/.train.lock; the exec'd trainer holds it
CREATE_FOLDER = "create-folder"
QUARANTINE = "quarantine"  # a bad checkpoint renamed to <name>.corrupted, next to a reason file
MOVE_ASIDE = "move-aside"  # a valid, older file renamed to <name>.superseded for a newer complete save
REMOVE_TEMP = "remove-temp"  # the project's own unfinished-save temp file
PLACE_SAVE = "place-save"  # a complete save that was never renamed, renamed to its final name
INSTALL_LINK = "install-link"  # stock mode: the chosen file hard-linked where F5-TTS's rule finds it
INSTALL_COPY = "install-copy"  # stock mode: the same as a durable copy
OWN_COPY = "own-copy"  # stock mode: a hard-linked model_last.pt replaced by a private copy
LINK_FOLDER = "link-folder"  # stock mode: F5-TTS's package-relative folder pointed at ours
RECORD_FINGERPRINT = "record-fingerprint"  # the dataset and batch plan this run starts with
RECORD_START = "record-start"  # this start in the run ledger (OUTPUT_DIR/preflight/runs.json)
KINDS = (
    LOCK,
    CREATE_FOLDER,
    QUARANTINE,
    MOVE_ASIDE,
    REMOVE_TEMP,
    PLACE_SAVE,
    INSTALL_LINK,
    INSTALL_COPY,
    OWN_COPY,
    LINK_FOLDER,
    RECORD_FINGERPRINT,
    RECORD_START,
)
NOT_DONE_AFTER_FAILURE = "not done: an earlier required action failed"


@dataclass(frozen=True)
class Action:
    kind: str
    path: Path
    target: Path | None = None
    cause: str = ""
    required: bool = False
    level: str = ""  # quarantine: the first validation level the file failed
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        verb = {
            LOCK: "lock",
            CREATE_FOLDER: "create folder",
            QUARANTINE: "quarantine",
            MOVE_ASIDE: "move aside (valid, older)",
            REMOVE_TEMP: "remove unfinished temp file",
            PLACE_SAVE: "rename complete save",
            INSTALL_LINK: "hard-link",
            INSTALL_COPY: "copy",
            OWN_COPY: "give its own copy to",
            LINK_FOLDER: "link",
            RECORD_FINGERPRINT: "record the dataset fingerprint in",
            RECORD_START: "record this start in",
        }[self.kind]
        text = f"{verb} {self.path}"
        if self.target is not None:
            text += f" -> {self.target}"
        return text + (f": {self.cause}" if self.cause else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.kind,
            "path": str(self.path),
            "target": None if self.target is None else str(self.target),
            "cause": self.cause,
            "required": self.required,
        }


@dataclass(frozen=True)
class ActionResult:
    action: Action
    done: bool
    error: str = ""
    landed: Path | None = None  # where the file really went (a quarantine takes the next free name)
    note: str = ""  # e.g. QUARANTINE_DIR could not be used, so the file was renamed in place

    def to_json(self) -> dict[str, Any]:
        return {
            **self.action.to_json(),
            "done": self.done,
            "error": self.error or None,
            "landed": None if self.landed is None else str(self.landed),
        }


@dataclass
class Performed:
    results: list[ActionResult]
    lock_fd: int | None = None  # kept open (inheritable) so the exec'd trainer holds the lock

    @property
    def failed_required(self) -> ActionResult | None:
        return next((r for r in self.results if not r.done and r.action.required), None)


def perform(actions: Sequence[Action], *, quarantine_dir: Path | None) -> Performed:
    """Do each action in order; after a failed required action the rest are recorded as not done."""
    performed = Performed([])
    for action in actions:
        if performed.failed_required is not None:
            performed.results.append(ActionResult(action, False, NOT_DONE_AFTER_FAILURE))
            continue
        performed.results.append(_do(action, quarantine_dir, performed))
    return performed


def _do(action: Action, quarantine_dir: Path | None, performed: Performed) -> ActionResult:
    handler = _HANDLERS[action.kind]
    try:
        return handler(action, quarantine_dir, performed)
    except OSError as error:
        return ActionResult(action, False, describe_os_error(error))


def describe_os_error(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    return error.strerror or str(error)


def _lock(action: Action, _qdir: Path | None, performed: Performed) -> ActionResult:
    from entrypoint import run_lock

    fd, problem = run_lock.acquire(action.path, action.target.name if action.target else run_lock.LOCK_NAME)
    if fd is None:
        return ActionResult(action, False, problem or "the lock could not be taken")
    performed.lock_fd = fd
    return ActionResult(action, True)


def _create_folder(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    action.path.mkdir(parents=True, exist_ok=True)
    return ActionResult(action, True, landed=action.path)


def _quarantine(action: Action, quarantine_dir: Path | None, _performed: Performed) -> ActionResult:
    from entrypoint.checkpoints.quarantine import quarantine

    suffix = naming.SUPERSEDED_SUFFIX if action.kind == MOVE_ASIDE else naming.QUARANTINE_SUFFIX
    result = quarantine(
        action.path,
        action.cause,
        action.level or "structure",
        quarantine_dir=quarantine_dir,
        details=action.details,
        suffix=suffix,
    )
    if result.moved_to is None:
        return ActionResult(action, False, result.error or "not moved", note=result.note)
    return ActionResult(action, result.error is None, result.error or "", result.moved_to, result.note)


def _remove_temp(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    if naming.temp_target(action.path.name) is None:
        # Never remove anything but our own temp files, whatever a plan says.
        return ActionResult(action, False, "not an unfinished-save temp file")
    try:
        action.path.unlink()
    except FileNotFoundError:
        return ActionResult(action, True, note="already gone")
    return ActionResult(action, True)


def _place_save(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    from entrypoint.checkpoints.quarantine import rename_no_replace

    assert action.target is not None
    rename_no_replace(action.path, action.target)
    fsync_folder(action.target.parent)
    return ActionResult(action, True, landed=action.target)


def _install(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    from entrypoint.checkpoints.install import atomic_copy

    assert action.target is not None
    if action.kind == INSTALL_LINK:
        try:
            os.link(action.path, action.target, follow_symlinks=True)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            atomic_copy(action.path, action.target)  # bind mounts of one disk refuse links: copy instead
            fsync_folder(action.target.parent)
            return ActionResult(action, True, landed=action.target, note="copied: a link was refused")
    else:
        atomic_copy(action.path, action.target)
    fsync_folder(action.target.parent)
    return ActionResult(action, True, landed=action.target)


def _own_copy(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    from entrypoint.checkpoints.install import COPY_MARGIN_BYTES
    from entrypoint.durable import copy_file

    size = action.path.stat().st_size
    free = shutil.disk_usage(action.path.parent).free
    if free < size + COPY_MARGIN_BYTES:
        raise OSError(errno.ENOSPC, f"no room for a private copy ({free / 1e9:.1f} GB free)")
    copy_file(action.path, action.path)  # onto itself: a private copy, the hard links keep the old data
    return ActionResult(action, True, landed=action.path)


def _link_folder(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    link, target = action.path, action.target
    assert target is not None
    if link.is_symlink():
        # Replace the link atomically (a new link renamed over it); the data it pointed to is untouched.
        temp = link.with_name(f".{link.name}.relink-{os.getpid()}")
        temp.symlink_to(target, target_is_directory=True)
        os.replace(temp, link)
    else:
        if link.is_dir():
            link.rmdir()  # only an empty folder is ever planned for replacement; rmdir refuses any other
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return ActionResult(action, True, landed=link)


def _record_fingerprint(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    from entrypoint.readiness.fingerprint import record_fingerprint

    problem = record_fingerprint(action.path.parent, action.details["fingerprint"], action.details["update"])
    return ActionResult(action, problem is None, problem or "", action.path)


def _record_start(action: Action, _qdir: Path | None, _performed: Performed) -> ActionResult:
    from entrypoint.ledger import record_start

    record_start(action.path, int(action.details["resumed_from"]), int(action.details["log_offset"]))
    return ActionResult(action, True, landed=action.path)


_HANDLERS: dict[str, Callable[[Action, Path | None, Performed], ActionResult]] = {
    LOCK: _lock,
    CREATE_FOLDER: _create_folder,
    QUARANTINE: _quarantine,
    MOVE_ASIDE: _quarantine,
    REMOVE_TEMP: _remove_temp,
    PLACE_SAVE: _place_save,
    INSTALL_LINK: _install,
    INSTALL_COPY: _install,
    OWN_COPY: _own_copy,
    LINK_FOLDER: _link_folder,
    RECORD_FINGERPRINT: _record_fingerprint,
    RECORD_START: _record_start,
}


def names_after(folder: Path, names: Sequence[str], actions: Sequence[Action]) -> list[str]:
    """The entry names `folder` will hold once `actions` are done: the plan reasoning about its own actions
    (F5-TTS's stock rule picks by name, so the plan must know what it leaves behind)."""
    after = list(names)
    for action in actions:
        if action.kind in (QUARANTINE, MOVE_ASIDE, REMOVE_TEMP, PLACE_SAVE) and action.path.parent == folder:
            after = [name for name in after if name != action.path.name]
        if (
            action.kind in (PLACE_SAVE, INSTALL_LINK, INSTALL_COPY)
            and action.target is not None
            and action.target.parent == folder
            and action.target.name not in after
        ):
            after.append(action.target.name)
    return after
