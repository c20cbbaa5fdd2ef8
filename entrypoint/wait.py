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
