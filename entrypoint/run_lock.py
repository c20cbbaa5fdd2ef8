"""One trainer per OUTPUT_DIR: two would overwrite each other's model_last.pt and remove each other's temp
files. `preflight run` takes an exclusive flock on OUTPUT_DIR/.train.lock and passes the open descriptor to
the trainer it execs, so the lock lives exactly as long as the trainer (the kernel drops it when the process
ends, however it ends: no stale lock after a crash).

The lock file is rewritten (truncated, then a "pid ... on ... since ..." line) only when it is ours: opened
without following a symlink, without blocking (a FIFO), a regular file with one link (a hard link to a
checkpoint would otherwise be emptied) holding nothing but such a line. Anything else under that name is
left untouched and the run stops, saying what to move away. Machine N of several takes
.train-machine-N.lock instead (naming.lock_name): machines sharing one OUTPUT_DIR each keep their own.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
import time
from pathlib import Path

from entrypoint.naming import LOCK_NAME

_STAMP = re.compile(rb"^pid \d+ on .* since \S+\n?$")
_MAX_STAMP = 4096
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, _MAX_STAMP, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def _not_ours(path: Path, info: os.stat_result, fd: int) -> str | None:
    """Why the open file is not a lock file this program may rewrite; None when it is."""
    fix = f"move it away (mv {path} {path}.moved) and start again"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file (a FIFO, socket or device): not used as the lock; {fix}"
    if info.st_nlink != 1:
        return (
            f"{path} has {info.st_nlink} hard links (another file shares its bytes): not used as the lock, "
            f"so that file is not emptied; {fix}"
        )
    if info.st_size == 0:
        return None
    if info.st_size > _MAX_STAMP:
        return f"{path} is {info.st_size} bytes, not a lock file: left untouched; {fix}"
    try:
        content = os.pread(fd, _MAX_STAMP, 0)
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error}); {fix}"
    if not _STAMP.match(content):
        return f"{path} holds something other than a lock line: left untouched; {fix}"
    return None


def _open(path: Path, flags: int) -> tuple[int | None, str | None]:
    try:
        return os.open(path, flags | _OPEN_FLAGS, 0o644), None
    except OSError as error:
        if error.errno == errno.ELOOP:
            try:
                target = f" to {os.readlink(path)}"
            except OSError:
                target = ""
            return None, (
                f"{path} is a symlink{target}: not used as the lock, so its target is not touched; "
                f"remove the link (rm {path}) and start again"
            )
        if error.errno == errno.ENOENT and not flags & os.O_CREAT:
            return None, None
        return None, f"cannot open {path}: {error.strerror or error}"


def acquire(output_dir: Path, name: str = LOCK_NAME) -> tuple[int | None, str | None]:
    """(descriptor, None) when the lock is ours, kept open across exec; (None, why) when it is held or the
    lock file cannot be used."""
    path = output_dir / name
    fd, problem = _open(path, os.O_RDWR | os.O_CREAT)
    if fd is None:
        return None, problem
    try:
        problem = _not_ours(path, os.fstat(fd), fd)
        if problem is None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                problem = f"another trainer is using {output_dir}{_holder(fd)}"
        if problem is not None:
            os.close(fd)
            return None, problem
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        os.set_blocking(fd, True)
        os.set_inheritable(fd, True)
    except OSError as error:
        os.close(fd)
        return None, f"cannot use {path}: {error.strerror or error}"
    return fd, None


def held_by_other(output_dir: Path, name: str = LOCK_NAME) -> str | None:
    """For `preflight check`: why a run would find the lock taken or unusable, without keeping (or
    creating) it."""
    path = output_dir / name
    fd, problem = _open(path, os.O_RDONLY)
    if fd is None:
        return problem
    try:
        problem = _not_ours(path, os.fstat(fd), fd)
        if problem is not None:
            return problem
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"another trainer is using {output_dir}{_holder(fd)}"
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None
