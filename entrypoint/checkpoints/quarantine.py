"""Move a bad checkpoint out of the way: a rename (bytes untouched) plus a reason file. Never a deletion.

`<name>` becomes `<name>.corrupted` (or `<QUARANTINE_DIR>/<name>.corrupted` when that folder is on the same
file system), next to `<that>.json` holding the cause. A name already taken gets `.1`, `.2`, ... and the
rename itself refuses to replace anything (renameat2 RENAME_NOREPLACE where the kernel has it), so an
earlier quarantined file is never overwritten, even by a concurrent run. A symlink is renamed as a link:
its target is not touched.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from entrypoint import __version__, mounts, naming
from entrypoint.durable import fsync_folder

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_MAX_SUFFIX = 1000


@dataclass(frozen=True)
class QuarantineResult:
    path: Path
    moved_to: Path | None  # None when it was not moved (dry run, or an error)
    reason_file: Path | None
    note: str = ""  # e.g. QUARANTINE_DIR was on another file system, so renamed in place
    error: str | None = None  # why it could not be moved
    into_quarantine_dir: bool = False  # the move was (or would be) into QUARANTINE_DIR, not in place


def _libc_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _libc_renameat2()


def rename_no_replace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError instead of replacing an existing `dst`."""
    if _RENAMEAT2 is not None:
        result = _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
    # A file system without RENAME_NOREPLACE: check, then rename (the window is tiny and only
    # matters if two preflights quarantine the same name at once).
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def quarantine_destination(path: Path, quarantine_dir: Path | None) -> tuple[Path, str]:
    """The folder a bad `path` goes to, and a note when QUARANTINE_DIR cannot be used."""
    if quarantine_dir is None:
        return path.parent, ""
    try:
        here = path.lstat().st_dev
        there = quarantine_dir.stat()
    except FileNotFoundError:
        return path.parent, f"QUARANTINE_DIR {quarantine_dir} does not exist; {path.name} renamed in place"
    except OSError as error:
        return (
            path.parent,
            f"QUARANTINE_DIR {quarantine_dir} is unusable ({error.strerror}); {path.name} renamed in place",
        )
    if not stat.S_ISDIR(there.st_mode):
        return path.parent, f"QUARANTINE_DIR {quarantine_dir} is not a folder; {path.name} renamed in place"
    if here != there.st_dev:
        return (
            path.parent,
            f"QUARANTINE_DIR {quarantine_dir} is on another file system than {path.parent} (moving would "
            f"copy); {path.name} renamed in place",
        )
    if _mount_id(path.parent) != _mount_id(quarantine_dir):
        return path.parent, _separate_mount_note(path, quarantine_dir)
    return quarantine_dir, ""


def _separate_mount_note(path: Path, quarantine_dir: Path) -> str:
    return (
        f"QUARANTINE_DIR {quarantine_dir} is a separate mount from {path.parent} (a bind mount or its own "
        f"volume line, although on the same disk): a rename cannot cross mounts; {path.name} renamed in "
        f"place (to use QUARANTINE_DIR, make it a folder inside the same volume, e.g. OUTPUT_DIR/quarantine)"
    )


MOUNTINFO = mounts.MOUNTINFO


def _mount_id(folder: Path) -> int | None:
    """The id of the mount `folder` lies on, None when that cannot be told (entrypoint.mounts)."""
    mount = mounts.mount_of(folder, MOUNTINFO)
    return mount.mount_id if mount is not None else None


def free_name(folder: Path, name: str, suffix: str = naming.QUARANTINE_SUFFIX) -> Path:
    """`<name>.corrupted`, or the first `<name>.corrupted.<k>` whose file and reason file are both free."""
    base = f"{name}{suffix}"
    for index in range(_MAX_SUFFIX):
        candidate = folder / (base if index == 0 else f"{base}.{index}")
        reason = candidate.with_name(candidate.name + naming.REASON_SUFFIX)
        if not os.path.lexists(candidate) and not os.path.lexists(reason):
            return candidate
    raise FileExistsError(errno.EEXIST, f"no free quarantine name for {name} in {folder}")


def planned_destination(
    path: Path, quarantine_dir: Path | None, suffix: str = naming.QUARANTINE_SUFFIX
) -> tuple[Path | None, str]:
    """Where `quarantine` would move `path` now (None when no free name exists), and the folder note."""
    folder, note = quarantine_destination(path, quarantine_dir)
    try:
        return free_name(folder, path.name, suffix), note
    except OSError:
        return None, note


def _stat_fields(path: Path) -> dict[str, Any]:
    info = path.lstat()
    return {
        "size": info.st_size,
        "mtime": _iso(info.st_mtime),
        "mtime_ns": info.st_mtime_ns,
        "ctime": _iso(info.st_ctime),
        "ctime_ns": info.st_ctime_ns,
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def quarantine(
    path: Path,
    cause: str,
    level: str,
    *,
    quarantine_dir: Path | None = None,
    details: dict[str, Any] | None = None,
    suffix: str = naming.QUARANTINE_SUFFIX,
) -> QuarantineResult:
    """Rename `path` (file, directory or symlink itself) out of the way and write its reason file.

    Errors (a read-only volume, permissions) are returned, not raised: the caller decides whether the run
    can go on.
    """
    folder, note = quarantine_destination(path, quarantine_dir)
    into = folder != path.parent
    try:
        facts = _stat_fields(path)
        destination = free_name(folder, path.name, suffix)
    except OSError as error:
        return QuarantineResult(path, None, None, note, error.strerror or str(error), into)
    reason_path = destination.with_name(destination.name + naming.REASON_SUFFIX)
    record = {
        "file": str(path),
        "moved_to": str(destination),
        "cause": cause,
        "failed_level": level,
        **facts,
        "quarantined_at": _iso(time.time()),
        "preflight_version": __version__,
    }
    if details:
        record["details"] = details
    try:
        rename_no_replace(path, destination)
    except OSError as error:
        if error.errno != errno.EXDEV or not into:
            return QuarantineResult(path, None, None, note, _describe(error), into)
        # A separate mount the check above could not see (no /proc): fall back in place, as for another
        # file system.
        note = _separate_mount_note(path, folder)
        in_place = quarantine(path, cause, level, details=details, suffix=suffix)
        return replace(in_place, note=note)
    try:
        _write_new(reason_path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        fsync_folder(destination.parent)
        if destination.parent != path.parent:
            fsync_folder(path.parent)
    except OSError as error:
        # The file is already out of the way, which is what matters; say the reason file is missing.
        return QuarantineResult(
            path, destination, None, note, f"reason file not written: {_describe(error)}", into
        )
    return QuarantineResult(path, destination, reason_path, note, None, into)


def _describe(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    return error.strerror or str(error)


def _write_new(path: Path, text: str) -> None:
    """Create `path` (never replacing an existing file) with `text`, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
