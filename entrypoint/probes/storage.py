"""Facts about folders, free space, shared memory and process limits. Reads only (the write test is a
check of its own, in entrypoint/checks/writable.py)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from entrypoint.naming import CHECKPOINT_SUFFIXES


@dataclass(frozen=True)
class SpaceFacts:
    path: str  # the folder asked about
    existing: str  # the nearest folder that exists (the path itself, or an ancestor)
    device: int
    free_bytes: int
    total_bytes: int


def nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def probe_space(path: Path) -> SpaceFacts:
    existing = nearest_existing(path)
    stats = os.statvfs(existing)
    return SpaceFacts(
        str(path),
        str(existing),
        existing.stat().st_dev,
        stats.f_bavail * stats.f_frsize,
        stats.f_blocks * stats.f_frsize,
    )


def largest_checkpoint_bytes(folder: Path) -> int:
    """Size of the largest regular checkpoint file directly in `folder` (0 when none or unreadable)."""
    largest = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.endswith(CHECKPOINT_SUFFIXES):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                largest = max(largest, entry.stat(follow_symlinks=False).st_size)
        except OSError:
            continue
    return largest


@dataclass(frozen=True)
class ShmFacts:
    path: str
    exists: bool
    total_bytes: int
    free_bytes: int


def probe_shm(path: Path = Path("/dev/shm")) -> ShmFacts:
    try:
        stats = os.statvfs(path)
    except OSError:
        return ShmFacts(str(path), False, 0, 0)
    return ShmFacts(str(path), True, stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize)


@dataclass(frozen=True)
class LimitFacts:
    memlock_soft: int  # resource.RLIM_INFINITY (-1) for unlimited
    stack_soft: int
    pid: int
    init_name: str | None  # the command of PID 1 when it is not us


def probe_limits(proc_root: Path = Path("/proc")) -> LimitFacts:
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    pid = os.getpid()
    init_name = None
    if pid != 1:
        try:
            init_name = (proc_root / "1" / "comm").read_text().strip() or None
        except OSError:
            init_name = None
    return LimitFacts(memlock, stack, pid, init_name)
