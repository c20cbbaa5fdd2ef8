"""Tensorboard metrics that a full disk cannot turn into a training crash.

tensorboard's writer thread keeps a failed write (ENOSPC) and raises it on the next add_scalar, which
F5-TTS's loop calls without a guard: metrics are worth less than the training run, so the first failure
is reported once and metrics are off from then on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

_TENSORBOARD_THREAD = "_AsyncWriterThread"


def _quiet_tensorboard_thread_errors() -> None:
    """tensorboard's writer thread dies with a traceback on ENOSPC; GuardedWriter reports that failure in one
    line when the stored error surfaces, so the thread's own traceback is left out of the log."""
    previous = threading.excepthook
    if getattr(previous, "_quiets_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == _TENSORBOARD_THREAD and issubclass(args.exc_type, OSError):
            return
        previous(args)

    hook._quiets_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class GuardedWriter:
    """Wraps a SummaryWriter: add_scalar/flush/close swallow OSError (one warning), then do nothing."""

    def __init__(self, inner: Any, log: Callable[[str], None] = print) -> None:
        self.inner = inner
        self.enabled = True
        self._log = log
        _quiet_tensorboard_thread_errors()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        try:
            getattr(self.inner, method)(*args, **kwargs)
        except OSError as error:
            self.enabled = False
            self._log(f"WARNING: tensorboard events not written: {error}; metrics are off, training goes on")

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        self._call("add_scalar", *args, **kwargs)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        if self.enabled:
            self._call("close")
        else:
            # Already broken: release the file handle without another write attempt being reported.
            with contextlib.suppress(OSError):
                self.inner.close()
        self.enabled = False
