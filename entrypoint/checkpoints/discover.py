"""Find checkpoint candidates in priority order, and what is wrong on the way. Only reads.

Sources (CHECKPOINT_SOURCES, in the order given):
- last:       OUTPUT_DIR/model_last.pt
- numbered:   OUTPUT_DIR/model_<N>.pt and .safetensors, highest N first (.pt before .safetensors at equal N)
- backups:    BACKUP_DIR/model_<N>.pt (and .safetensors), highest N first
- pretrained: PRETRAINED_CHECKPOINT, then OUTPUT_DIR/pretrained_* (the copy F5-TTS's stock CLI makes), by name

An entry that cannot be a usable checkpoint (dangling or looping symlink, a directory, a FIFO, a file we may
not read, an OUTPUT_DIR or BACKUP_DIR that exists but cannot be listed) is a Finding, not a candidate.
Unfinished-save temp files (`.<final>.partial-<pid>-<hex>`) are listed separately: whether one is stale or
the newest data is decided after validation (see select.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from entrypoint import naming
from entrypoint.files import same_file


@dataclass(frozen=True)
class Candidate:
    """A file that may be the checkpoint to load."""

    path: Path  # the directory entry (a symlink stays a symlink here)
    source: str  # "last" | "numbered" | "backups" | "pretrained"
    size: int  # of the file the entry resolves to
    update_hint: int | None = None  # the number in the name, if any (not yet read from the file)
    link_target: Path | None = None  # set when `path` is a symlink
    movable: bool = True  # inside OUTPUT_DIR/BACKUP_DIR: quarantine may rename the entry
    promote_to: Path | None = None  # a complete temp file: the final name the interrupted save meant


@dataclass(frozen=True)
class Finding:
    """An entry named like a checkpoint that cannot be read as one."""

    path: Path
    source: str
    problem: str  # "dangling-link" | "link-loop" | "directory" | "not-a-file" | "unreadable" | "missing"
    detail: str  # plain words for the report
    movable: bool  # renaming it out of the way is safe and useful (never for files outside our folders)


@dataclass(frozen=True)
class TempFile:
    """A file left by a save that did not finish renaming (or did not finish writing)."""

    path: Path
    final: Path  # the name the save was writing
    source: str
    pid: int
    size: int


@dataclass(frozen=True)
class Discovery:
    candidates: tuple[Candidate, ...]
    findings: tuple[Finding, ...] = ()
    temps: tuple[TempFile, ...] = ()
    strays: tuple[Path, ...] = field(default=())  # other model_*/.pt names F5-TTS's stock rule would see


class _Listings:
    """Each folder listed (and sorted) once per discovery, however many sources look into it."""

    def __init__(self) -> None:
        self._names: dict[Path, list[str]] = {}
        self._errors: dict[Path, OSError] = {}
        self._temps: dict[tuple[Path, bool], list[TempFile]] = {}

    def names(self, folder: Path) -> list[str]:
        if folder not in self._names:
            try:
                self._names[folder] = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                self._names[folder] = []
            except OSError as error:
                self._names[folder] = []
                self._errors[folder] = error
        return self._names[folder]

    def error(self, folder: Path) -> OSError | None:
        """Why `folder` exists but cannot be listed (None when it was listed or does not exist)."""
        self.names(folder)
        return self._errors.get(folder)

    def temps(self, folder: Path, in_backups: bool) -> list[TempFile]:
        key = (folder, in_backups)
        if key not in self._temps:
            self._temps[key] = _temps(folder, in_backups, self.names(folder))
        return self._temps[key]


def _classify(path: Path, source: str, movable: bool, update_hint: int | None) -> Candidate | Finding:
    """Look at one directory entry without opening anything that could block (a FIFO) or run code."""
    try:
        own = path.lstat()
    except FileNotFoundError:
        return Finding(path, source, "missing", f"{path} does not exist", False)
    link_target: Path | None = None
    if stat.S_ISLNK(own.st_mode):
        link_target = Path(os.readlink(path))
        try:
            info = path.stat()
        except FileNotFoundError:
            return Finding(
                path,
                source,
                "dangling-link",
                f"{path} is a dangling symlink to {link_target} (which does not exist)",
                movable,
            )
        except OSError as error:
            if error.errno == errno.ELOOP:
                return Finding(path, source, "link-loop", f"{path} is a symlink loop", movable)
            return Finding(path, source, "unreadable", f"{path}: {error.strerror}", False)
    else:
        info = own
    if stat.S_ISDIR(info.st_mode):
        return Finding(path, source, "directory", f"{path} is a folder, not a file", movable)
    if not stat.S_ISREG(info.st_mode):
        return Finding(
            path, source, "not-a-file", f"{path} is not a regular file (a device, FIFO or socket)", movable
        )
    try:
        # A bare descriptor (no Python file object: this runs for every file of a large folder), non-blocking
        # in case the entry was swapped for a FIFO since the stat.
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except PermissionError:
        # Not quarantined: the file may be perfectly valid and only owned by another user.
        return Finding(path, source, "unreadable", f"{path} cannot be read (permission denied)", False)
    except OSError as error:
        return Finding(path, source, "unreadable", f"{path} cannot be read ({error.strerror})", False)
    return Candidate(path, source, info.st_size, update_hint, link_target, movable)


def _unlistable(folder: Path | None, source: str, listings: _Listings) -> list[Finding]:
    """A folder that exists but cannot be listed hides every checkpoint in it: never read as "empty"."""
    if folder is None:
        return []
    error = listings.error(folder)
    if error is None:
        return []
    detail = f"{folder} cannot be listed ({error.strerror}): the checkpoints in it cannot be seen"
    return [Finding(folder, source, "unreadable", detail, False)]


def _numbered_names(names: list[str]) -> list[tuple[int, str]]:
    found = []
    for name in names:
        update = naming.numbered_update(name)
        if update is not None:
            found.append((update, name))
    # Highest update first; at an equal update the training .pt before an EMA-only .safetensors.
    found.sort(key=lambda item: (-item[0], not item[1].endswith(".pt")))
    return found


def _temps(folder: Path, in_backups: bool, names: list[str]) -> list[TempFile]:
    """Unfinished-save temp files in one folder, each with the source its final name belongs to."""
    temps = []
    for name in names:
        final = naming.temp_target(name)
        if final is None or not naming.is_checkpoint_name(final):
            continue
        if in_backups:
            source = "backups" if naming.numbered_update(final) is not None else None
        elif final == naming.LAST_NAME:
            source = "last"
        elif naming.numbered_update(final) is not None:
            source = "numbered"
        elif final.startswith(naming.PRETRAINED_PREFIX):
            source = "pretrained"
        else:
            source = None
        path = folder / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if source is None or not stat.S_ISREG(info.st_mode):
            continue
        pid = naming.temp_pid(name)
        if pid is None:
            continue
        temps.append(TempFile(path, folder / final, source, pid, info.st_size))
    return temps


def discover(
    sources: Sequence[str],
    output_dir: Path,
    backup_dir: Path | None,
    pretrained: Path | None,
    *,
    folder_copy_first: bool = False,
) -> Discovery:
    """Every candidate of the given sources in priority order, plus findings, temp files and strays.

    folder_copy_first: try OUTPUT_DIR's `pretrained_<name>` copy of PRETRAINED_CHECKPOINT before the
    original (what F5-TTS's stock trainer reads is that copy, so it is the one worth verifying deeply).
    """
    items: list[Candidate | Finding] = []
    temps: list[TempFile] = []
    listings = _Listings()
    if {"last", "numbered"} & set(sources):
        items += _unlistable(output_dir, "numbered" if "numbered" in sources else "last", listings)
    if "backups" in sources:
        items += _unlistable(backup_dir, "backups", listings)
    for source in sources:
        if source == "last":
            path = output_dir / naming.LAST_NAME
            if os.path.lexists(path):
                items.append(_classify(path, source, True, None))
            temps += [t for t in listings.temps(output_dir, False) if t.source == source]
        elif source == "numbered":
            for update, name in _numbered_names(listings.names(output_dir)):
                items.append(_classify(output_dir / name, source, True, update))
            temps += [t for t in listings.temps(output_dir, False) if t.source == source]
        elif source == "backups" and backup_dir is not None:
            for update, name in _numbered_names(listings.names(backup_dir)):
                items.append(_classify(backup_dir / name, source, True, update))
            temps += listings.temps(backup_dir, True)
        elif source == "pretrained":
            items += _pretrained(output_dir, pretrained, folder_copy_first, listings.names(output_dir))
            temps += [t for t in listings.temps(output_dir, False) if t.source == source]
    candidates = tuple(item for item in items if isinstance(item, Candidate))
    findings = tuple(item for item in items if isinstance(item, Finding))
    return Discovery(
        candidates, findings, tuple(temps), tuple(_strays(output_dir, listings.names(output_dir)))
    )


def _pretrained(
    output_dir: Path, pretrained: Path | None, folder_copy_first: bool, names: list[str]
) -> list[Candidate | Finding]:
    items: list[Candidate | Finding] = []
    copy_name = None
    if pretrained is not None:
        copy_name = pretrained.name
        if not copy_name.startswith(naming.PRETRAINED_PREFIX):
            copy_name = naming.PRETRAINED_PREFIX + copy_name
    if folder_copy_first and copy_name and os.path.lexists(output_dir / copy_name):
        copy = output_dir / copy_name
        if pretrained is None or not same_file(copy, pretrained):
            items.append(_classify(copy, "pretrained", True, None))
    if pretrained is not None:
        # Moved only when it lies in OUTPUT_DIR itself; anywhere else it is the user's file.
        item = _classify(pretrained, "pretrained", pretrained.parent == output_dir, None)
        if isinstance(item, Finding):
            # The user's own file (often on a read-only mount): reported, never moved.
            detail = f"PRETRAINED_CHECKPOINT: {item.detail}"
            item = Finding(
                item.path, item.source, item.problem, detail, item.movable and item.problem != "missing"
            )
        items.append(item)
    for name in names:
        if name.startswith(naming.PRETRAINED_PREFIX) and name.endswith(naming.LOADABLE_ENDINGS):
            path = output_dir / name
            if pretrained is not None and same_file(path, pretrained):
                continue
            if any(isinstance(item, Candidate | Finding) and item.path == path for item in items):
                continue
            items.append(_classify(path, "pretrained", True, None))
    return items


def _strays(output_dir: Path, names: list[str]) -> list[Path]:
    """Names F5-TTS's stock rule would consider that are none of our candidates (e.g. model_best.pt)."""
    strays = []
    for name in names:
        if not name.endswith(naming.LOADABLE_ENDINGS) or name == naming.LAST_NAME:
            continue
        if naming.numbered_update(name) is not None or name.startswith(naming.PRETRAINED_PREFIX):
            continue
        strays.append(output_dir / name)
    return strays
