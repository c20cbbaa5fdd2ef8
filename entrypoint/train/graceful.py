"""SIGTERM / SIGINT: finish the update in progress, save model_last.pt safely, exit 0.

The handler only records the request; the trainer looks at it between updates (never inside one), so the
model, the optimizer and the EMA are consistent when the final save starts. A second signal while stopping is
reported and otherwise ignored: the save goes on, and even a SIGKILL at that moment corrupts nothing
because every save writes a temp file and renames it (see checkpoint_manager).

Bound from the signal to the exit: the rest of the current update (one optimizer step over
GRAD_ACCUMULATION_STEPS batches), plus at most two checkpoint writes (a numbered save if that update was due
one or a commit in flight, and one save of model_last.pt, skipped when that update already saved it), plus
the interpreter's exit. A backup copy in flight gives up within one chunk (see backups). A container
runtime's stop grace period must exceed this; see docs/trainer.md for figures.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Set by SIGTERM/SIGINT; read by the training loop between updates.

    The handler only records the signal: printing from a handler could re-enter the output stream (or the
    log tee's lock) that the interrupted code was in the middle of using. The trainer reports the signals
    at its next safe point.
    """

    def __init__(self) -> None:
        self.signals: list[str] = []

    @property
    def requested(self) -> bool:
        return bool(self.signals)

    @property
    def signal_name(self) -> str:
        return self.signals[0] if self.signals else ""

    def request(self, name: str) -> None:
        self.signals.append(name)

    def repeated(self) -> list[str]:
        """Signals that came after the first one (ignored: the stop was already under way)."""
        return self.signals[1:]

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)


def install_stop_handlers(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> StopRequest:
    """Install handlers that turn the given signals into a StopRequest (main thread only)."""
    stop = StopRequest()
    for signum in signals:
        signal.signal(signum, stop._handle)
    return stop


def stop_signals_held(loader: Any) -> contextlib.AbstractContextManager[None]:
    """Hold SIGTERM/SIGINT back from this thread while `loader` forks its workers, when they are shielded
    (shield_workers): only a shielded worker unblocks them again; any other would keep them blocked for
    good and could not be terminated."""
    if not is_shielded(loader):
        return contextlib.nullcontext()
    return _held()


def is_shielded(loader: Any) -> bool:
    init = getattr(_forking_loader(loader), "worker_init_fn", None)
    return isinstance(init, functools.partial) and init.func is _own_session


def _forking_loader(loader: Any) -> Any:
    """The torch DataLoader that forks the workers: Accelerate's loaders (DataLoaderShard, SkipDataLoader)
    are adapters around one (`base_dataloader`), and an attribute set on the adapter stays on the adapter."""
    base = vars(loader).get("base_dataloader") if hasattr(loader, "__dict__") else None
    return base if base is not None else loader


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back from this thread while the data loader forks its workers.

    A worker forked now starts with the signals blocked, so a launcher's stop sent to the whole process
    group before the worker has left it (`_own_session`) waits in the worker instead of killing it; the
    worker drops it once it is in its own session. The trainer itself loses nothing: the signal is handled
    by another thread of the process, or by this one when the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _own_session(worker_init: Callable[[int], None] | None, worker_id: int) -> None:
    os.setsid()
    # A stop that reached the process group before setsid was meant for the trainer, which has it too.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if worker_init is not None:
        worker_init(worker_id)


def shield_workers(loader: Any) -> None:
    """DataLoader workers of `loader` start in a session of their own. A launcher that stops its trainer
    signals the trainer's whole process group (torchrun: killpg), and torch's worker dies on a SIGTERM that
    does not come from its parent: the trainer would lose its data loader in the middle of its final save.
    The trainer's own signals to its workers (shutdown) still reach them, and they end with the trainer."""
    forking = _forking_loader(loader)
    if getattr(forking, "num_workers", 0) and not is_shielded(forking):
        forking.worker_init_fn = functools.partial(_own_session, forking.worker_init_fn)
