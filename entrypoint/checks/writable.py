"""Output, backup and log folders exist and the running user can really write there (tried, not guessed
from permission bits: a read-only mount, a full disk or a root-squashed NFS share all look writable)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult
from entrypoint.probes.storage import nearest_existing


def _try_write(folder: Path) -> str | None:
    """None when a file could be created, written, fsynced and removed in `folder`; else the reason."""
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
    return None


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for uid {os.getuid()}"
    if error.errno == errno.ENOSPC:
        return "no space left"
    return error.strerror or str(error)


def _exists(path: Path) -> bool | OSError:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError as error:  # a parent the user may not enter, a stale NFS handle, a symlink loop
        return error
    return True


def check_writable(label: str, variable: str, folder: Path, *, create: bool) -> CheckResult:
    name = f"writable-{label}"
    fix = f"mount {variable} read-write, owned by uid {os.getuid()} (or set {variable} to a writable folder)"
    exists = _exists(folder)
    if isinstance(exists, OSError):
        return CheckResult(name, FAIL, f"{variable} {folder} cannot be reached: {_reason(exists)}", fix)
    if not exists and create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            exists = True
        except OSError as error:
            return CheckResult(name, FAIL, f"{variable} {folder} cannot be created: {_reason(error)}", fix)
    if not exists:
        parent = nearest_existing(folder)
        problem = _try_write(parent) if parent.is_dir() else "not a folder"
        if problem:
            return CheckResult(name, FAIL, f"{variable} {folder} does not exist and {parent}: {problem}", fix)
        return CheckResult(name, WARN, f"{variable} {folder} does not exist yet (`preflight run` creates it)")
    if not folder.is_dir():
        return CheckResult(name, FAIL, f"{variable} {folder} is not a folder", fix)
    problem = _try_write(folder)
    if problem:
        return CheckResult(name, FAIL, f"{variable} {folder} is not writable: {problem}", fix)
    return CheckResult(name, OK, f"{variable} {folder} is writable")
