"""One trainer per OUTPUT_DIR: two would overwrite each other's model_last.pt and remove each other's temp
files. `preflight run` takes an exclusive flock on OUTPUT_DIR/.train.lock and passes the open descriptor to
the trainer it execs, so the lock lives exactly as long as the trainer (the kernel drops it when the process
ends, however it ends: no stale lock after a crash)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".train.lock"


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return f" ({text})"
    return ""


def acquire(output_dir: Path) -> tuple[int | None, str | None]:
    """(descriptor, None) when the lock is ours, kept open across exec; (None, why) when it is held or the
    lock file cannot be used."""
    path = output_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        return None, f"cannot open {path}: {error.strerror or error}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, f"another trainer is using {output_dir}{_holder(path)}"
    os.ftruncate(fd, 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
    os.set_inheritable(fd, True)
    return fd, None


def held_by_other(output_dir: Path) -> str | None:
    """For `preflight check`: why a run would find the lock taken, without keeping (or creating) it."""
    path = output_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"another trainer is using {output_dir}{_holder(path)}"
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None
