"""Bounded waiting, with tenacity: a mount that is not there yet, a file that is still being copied in."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.5
RECENT_S = 5.0  # a file modified this recently may still be growing


def _retry_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """True as soon as `condition()` holds, False when it still does not after `timeout_s`."""
    if condition():
        return True
    if timeout_s <= 0:
        return False
    # tenacity is imported here, not at module level: the common path (nothing to wait for) stays fast.
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

    retrying = Retrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(POLL_S),
        retry=retry_if_result(lambda held: not held),
        retry_error_callback=lambda state: False,
    )
    return bool(retrying(condition))


def wait_for_path(path: Path, timeout_s: float) -> bool:
    """Wait for a path to appear (a volume mounted late); True when it exists."""
    return _retry_until(path.exists, timeout_s)


def recently_modified(path: Path, now: Callable[[], float] = time.time) -> bool:
    """Modified within RECENT_S: it may still be growing."""
    try:
        return now() - path.stat().st_mtime <= RECENT_S
    except OSError:
        return False


def wait_until_stable(path: Path, timeout_s: float, now: Callable[[], float] = time.time) -> bool:
    """Wait while a recently modified file keeps changing size or mtime; True once it holds still."""
    try:
        first = path.stat()
    except OSError:
        return True  # nothing to wait for: validation reports a missing or unreadable file
    if now() - first.st_mtime > RECENT_S:
        return True
    last = [(first.st_size, first.st_mtime_ns)]

    def unchanged() -> bool:
        try:
            current = path.stat()
        except OSError:
            return True
        held = (current.st_size, current.st_mtime_ns) == last[0]
        last[0] = (current.st_size, current.st_mtime_ns)
        return held and now() - current.st_mtime > POLL_S

    return _retry_until(unchanged, timeout_s)


def holds_still(path: Path, timeout_s: float) -> bool:
    """True once the file's size and mtime stay the same over one poll interval; False when they kept changing
    for `timeout_s` (at least one interval is always watched, so a finished file is never called changing)."""

    def identity() -> tuple[int, int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    deadline = time.monotonic() + max(timeout_s, POLL_S)
    last = identity()
    while True:
        time.sleep(POLL_S)  # watching a copy that someone else is writing: nothing to wait on but time
        current = identity()
        if current == last:
            return True
        if time.monotonic() >= deadline:
            return False
        last = current
