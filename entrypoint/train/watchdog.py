"""The stall watchdog: a run whose process lives but no longer trains is ended, so the restart policy resumes it.

The training loop calls `beat(update)` after every update and wraps saves and backups in `phase("save")`;
time spent in a paused phase never counts. A monitor thread checks the age of the last heartbeat: past the
timeout it writes every thread's stack (faulthandler) and the GPU state (`nvidia-smi`, where present) to
the log, records the stall, ends the DataLoader workers and exits with EXIT_STALLED (7).

The timeout is STALL_TIMEOUT_S, or automatic: 20 x the slowest of the recent updates, at least STALL_MIN_S
(and STALL_MIN_S until a few updates have been timed). A hang that holds the interpreter lock (a C call
that never returns) starves the monitor thread, so faulthandler's own C-level timer is armed as a backstop
at twice the timeout: it dumps the stacks and exits with 1 (a crash: the restart policy retries it too).

The monitor thread also writes OUTPUT_DIR/preflight/heartbeat.json every few seconds for `preflight
status` (update, phase, age, updates/s); a plain rename, not fsync'd: it is a gauge, not data.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.errors import EXIT_STALLED

AUTO_FACTOR = 20.0  # automatic timeout: this many times the slowest recent update
TIMED_UPDATES = 50  # recent update durations kept
WARM_UP_UPDATES = 3  # durations needed before the automatic timeout replaces STALL_MIN_S
PAUSED_PHASES = frozenset({"save", "backup", "load"})
HEARTBEAT_FILE = "heartbeat.json"
HEARTBEAT_EVERY_S = 5.0
_BACKSTOP_FACTOR = 2.0
_BACKSTOP_GRACE_S = 60.0
_NVIDIA_SMI_TIMEOUT_S = 20


@dataclass(frozen=True)
class Stall:
    update: int
    phase: str
    silent_s: float  # seconds since the last heartbeat
    timeout_s: float
    reason: str  # "no update" or what else detected it (a DataLoader timeout)
    machines: int = 1  # NUM_MACHINES of the training: above 1, a lost machine is a likely cause


class Watchdog:
    def __init__(
        self,
        *,
        timeout_s: float | None,
        min_s: float,
        on_stall: Callable[[Stall], None] = lambda stall: None,
        heartbeat_path: Path | None = None,
        max_updates: int = 0,
        backstop: bool = True,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.fixed_timeout_s = timeout_s  # None: automatic; 0: off
        self.min_s = min_s
        self._on_stall = on_stall
        self._heartbeat_path = heartbeat_path
        self._max_updates = max_updates
        self._backstop = backstop and timeout_s != 0
        self._exit = exit_process
        self._durations: deque[float] = deque(maxlen=TIMED_UPDATES)
        self._started_at = time.monotonic()
        self.last_beat = self._started_at
        self.last_beat_wall = time.time()
        self.update = 0
        self._beats = 0
        self.phase = "start"
        self._phase_ended = False  # a paused phase ran since the last beat: that duration is not an update's
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one stall report, even when two detectors fire
        self._heartbeat_written = 0.0
        self._armed_at = 0.0
        self._rearm_after_s = 0.0
        self.machines = 1  # set by the trainer; named in the stall line

    # --- called by the training loop ------------------------------------------------------------------
    def beat(self, update: int) -> None:
        now = time.monotonic()
        if self._beats and not self._phase_ended:
            self._durations.append(now - self.last_beat)
        self._phase_ended = False
        self._beats += 1
        self.last_beat = now
        self.last_beat_wall = time.time()
        self.update = update
        self.phase = "train"
        if self._backstop and now - self._armed_at > self._rearm_after_s:
            self._arm_backstop()  # re-armed once in a while, not per update: its cost stays off that path

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """A save, backup or checkpoint load: not an update, and its time does not count."""
        previous = self.phase
        self.phase = name
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()
        try:
            yield
        finally:
            self.phase = previous
            self.last_beat = time.monotonic()
            self._phase_ended = True
            if self._backstop:
                self._arm_backstop()

    def timeout_s(self) -> float:
        """The current timeout in seconds (0: off)."""
        if self.fixed_timeout_s is not None:
            return self.fixed_timeout_s
        if len(self._durations) < WARM_UP_UPDATES:
            return self.min_s
        return max(self.min_s, AUTO_FACTOR * max(self._durations))

    def updates_per_s(self) -> float | None:
        if not self._durations:
            return None
        total = sum(self._durations)
        return len(self._durations) / total if total > 0 else None

    # --- the monitor ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self.last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()
        if self._backstop:
            self._arm_backstop()

    def stop(self) -> None:
        self.phase = "ended"
        self.write_heartbeat()
        self._stopped = True
        self._wake.set()
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped:
            timeout = self.timeout_s()
            self._wake.wait(min(HEARTBEAT_EVERY_S, timeout / 4) if timeout else HEARTBEAT_EVERY_S)
            if self._stopped:
                return
            now = time.monotonic()
            if now - self._heartbeat_written >= HEARTBEAT_EVERY_S:
                self._heartbeat_written = now
                self.write_heartbeat()
            if not timeout or self.phase in PAUSED_PHASES:
                continue
            silent = now - self.last_beat
            if silent > timeout:
                self.stalled("no update completed")

    def _arm_backstop(self) -> None:
        timeout = self.timeout_s()
        if timeout:
            window = timeout * _BACKSTOP_FACTOR + _BACKSTOP_GRACE_S
            faulthandler.dump_traceback_later(window, exit=True, file=_stderr_file())
            self._armed_at = time.monotonic()
            self._rearm_after_s = window / 4

    def stalled(self, reason: str) -> None:
        """Report the stall and end the process with EXIT_STALLED; callable from any thread."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is reporting it already
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()
        stall = Stall(
            update=self.update,
            phase=self.phase,
            silent_s=time.monotonic() - self.last_beat,
            timeout_s=self.timeout_s(),
            reason=reason,
            machines=self.machines,
        )
        try:
            report_stall(stall)
            self._on_stall(stall)
        finally:
            end_workers()
            _flush()
            self._exit(EXIT_STALLED)

    def write_heartbeat(self) -> None:
        if self._heartbeat_path is None:
            return
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "update": self.update,
            "phase": self.phase,
            "last_update_time": self.last_beat_wall if self._beats else None,
            "written": time.time(),
            "updates_per_s": self.updates_per_s(),
            "max_updates": self._max_updates,
            "stall_timeout_s": self.timeout_s(),
        }
        temp = self._heartbeat_path.with_name(f".{HEARTBEAT_FILE}.{os.getpid()}")
        with contextlib.suppress(OSError):
            temp.write_text(json.dumps(data) + "\n", encoding="utf-8")
            os.replace(temp, self._heartbeat_path)


def report_stall(stall: Stall) -> None:
    """The stall line, every thread's stack and the GPU state, to stderr (and so to training.log)."""
    print(stall_line(stall), file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):
        faulthandler.dump_traceback(file=_stderr_file(), all_threads=True)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        print("nvidia-smi: not present (no GPU state to show)", file=sys.stderr, flush=True)
        return
    try:
        result = subprocess.run(
            [smi], capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=False
        )
        print(result.stdout + result.stderr, file=sys.stderr, flush=True)
    except subprocess.TimeoutExpired:
        print(
            f"nvidia-smi did not answer within {_NVIDIA_SMI_TIMEOUT_S} s: the GPU may be lost "
            "(reset the VM or the host if the next start says so)",
            file=sys.stderr,
            flush=True,
        )
    except OSError as error:
        print(f"nvidia-smi could not run: {error}", file=sys.stderr, flush=True)


def stall_line(stall: Stall) -> str:
    # Over several machines the watchdog can fire before COLLECTIVE_TIMEOUT_S names a machine that hangs.
    machines = (
        f" (one of {stall.machines} machines: one that stops answering stalls the others the same way)"
        if stall.machines > 1
        else ""
    )
    return (
        f"\nSTALL: {stall.reason} for {stall.silent_s:.0f} s (timeout {stall.timeout_s:g} s) in phase "
        f"{stall.phase}, after update {stall.update}{machines}; the stacks of every thread and the GPU state "
        f"follow. Exiting with {EXIT_STALLED}: the restart policy resumes from the last save."
    )


def end_workers() -> None:
    """SIGKILL this process's multiprocessing children (DataLoader workers): a worker blocked in a read
    would otherwise outlive us. The log copier is not one of them, so the last lines still reach the log."""
    import multiprocessing

    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError, TypeError):
            if child.pid:
                os.kill(child.pid, signal.SIGKILL)


def _stderr_file() -> Any:
    stream = sys.stderr
    original = getattr(stream, "_original", None)  # the preflight's Python-level tee wraps the terminal
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return original if original is not None else sys.__stderr__


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
