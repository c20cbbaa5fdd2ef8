"""Output, backup and log folders exist and the running user can really write there (tried, not guessed
from permission bits: a read-only mount, a full disk or a root-squashed NFS share all look writable).

`probe_folder` reads (and creates then removes one probe file); `check_writable` judges its facts. A missing
folder whose nearest existing parent is writable is fine: `preflight run` creates it (a planned action).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from entrypoint.checks.result import FAIL, OK, CheckResult
from entrypoint.probes.storage import nearest_existing


@dataclass(frozen=True)
class FolderFacts:
    path: Path
    exists: bool
    unreachable: str  # why it cannot be reached (a parent the user may not enter, a stale handle), or ""
    is_dir: bool
    tried: Path  # the folder the write test ran in: the folder itself, or its nearest existing parent
    write_problem: str  # "" when a file could be created, written, fsynced and removed there
    uid: int


def _try_write(folder: Path) -> str:
    """'' when a file could be created, written, fsynced and removed in `folder`; else the reason."""
    try:
        handle, name = tempfile.mkstemp(prefix=".preflight-write-test-", dir=folder)
    except OSError as error:
        return _reason(error)
    try:
        os.write(handle, b"ok")
        os.fsync(handle)
    except OSError as error:
        return _reason(error)
    finally:
        os.close(handle)
        os.unlink(name)
    return ""


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for uid {os.getuid()}"
    if error.errno == errno.ENOSPC:
        return "no space left"
    return error.strerror or str(error)


def probe_folder(folder: Path) -> FolderFacts:
    try:
        folder.stat()
        exists, unreachable = True, ""
    except FileNotFoundError:
        exists, unreachable = False, ""
    except OSError as error:  # a parent the user may not enter, a stale NFS handle, a symlink loop
        exists, unreachable = False, _reason(error)
    is_dir = exists and folder.is_dir()
    if unreachable:
        return FolderFacts(folder, False, unreachable, False, folder, unreachable, os.getuid())
    tried = folder if exists else nearest_existing(folder)
    problem = "not a folder" if (exists and not is_dir) or not tried.is_dir() else _try_write(tried)
    return FolderFacts(folder, exists, unreachable, is_dir, tried, problem, os.getuid())


def check_writable(label: str, variable: str, facts: FolderFacts) -> CheckResult:
    name = f"writable-{label}"
    folder = facts.path
    fix = f"mount {variable} read-write, owned by uid {facts.uid} (or set {variable} to a writable folder)"
    if facts.unreachable:
        return CheckResult(name, FAIL, f"{variable} {folder} cannot be reached: {facts.unreachable}", fix)
    if facts.exists and not facts.is_dir:
        return CheckResult(name, FAIL, f"{variable} {folder} is not a folder", fix)
    if not facts.exists:
        if facts.write_problem:
            return CheckResult(
                name,
                FAIL,
                f"{variable} {folder} does not exist and {facts.tried}: {facts.write_problem}",
                fix,
            )
        return CheckResult(name, OK, f"{variable} {folder} does not exist yet: `preflight run` creates it")
    if facts.write_problem:
        return CheckResult(name, FAIL, f"{variable} {folder} is not writable: {facts.write_problem}", fix)
    return CheckResult(name, OK, f"{variable} {folder} is writable")
