"""One log file on the logs volume that the preflight and the trainer both append to.

Users `tail -f` and `grep` it, so every line is written whole, flushed at once and redacted.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import BinaryIO, TextIO

from entrypoint.naming import LOG_FILE_NAME
from entrypoint.redact import Redactor


class Tee:
    """A text stream that writes to the original stream and, redacted, to the log file.

    Redaction runs over the stream, not per write or per line: a secret split over two writes or over lines
    is masked in both places (see StreamRedactor).
    """

    def __init__(self, original: TextIO, log: TextIO, redact: Redactor) -> None:
        self._original = original
        self._log: TextIO | None = log
        self._stream = redact.text_stream()
        self._lock = threading.Lock()
        self._pending = ""

    def write(self, text: str) -> int:
        with self._lock:
            self._pass_on(self._stream.feed(text))
        return len(text)

    def finish(self) -> None:
        """Pass on what the redactor still holds (the program is ending, or stops writing through us)."""
        with self._lock:
            self._pass_on(self._stream.finish())
            if self._pending:
                self._to_log("\n")  # the last line, unterminated: the log is read line by line
        self.flush()

    def _pass_on(self, clean: str) -> None:
        if clean:
            self._original.write(clean)
        self._to_log(clean)

    def _to_log(self, clean: str) -> None:
        if self._log is None:
            return
        # tqdm redraws with "\r": keep only complete lines in the file so grep sees each once.
        self._pending += clean
        *lines, self._pending = self._pending.split("\n")
        try:
            for line in lines:
                self._log.write(line.rsplit("\r", 1)[-1] + "\n")
            if lines:
                self._log.flush()
        except OSError as error:
            self._give_up(error)

    def flush(self) -> None:
        self._original.flush()
        with self._lock:
            if self._log is not None:
                try:
                    self._log.flush()
                except OSError as error:
                    self._give_up(error)

    def _give_up(self, error: OSError) -> None:
        # A full or vanished logs volume must never stop the program whose output this is.
        log, self._log = self._log, None
        with contextlib.suppress(OSError, ValueError):
            log.close()  # type: ignore[union-attr]
        self._original.write(f"WARNING: log file not written from here on: {error.strerror or error}\n")

    def isatty(self) -> bool:
        return self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self._original, name)


def open_log(log_dir: Path, name: str = LOG_FILE_NAME) -> TextIO:
    """Open <log_dir>/training.log (or this machine's own name, naming.log_file_name) for appending,
    line-buffered."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return open(log_dir / name, "a", encoding="utf-8", buffering=1)


def tee_output(log_dir: Path, redact: Redactor, name: str = LOG_FILE_NAME) -> TextIO | None:
    """Send stdout and stderr to the log file too; None (and output unchanged) when it cannot be opened."""
    try:
        log = open_log(log_dir, name)
    except OSError:
        return None
    tees = (Tee(sys.stdout, log, redact), Tee(sys.stderr, log, redact))
    sys.stdout, sys.stderr = tees  # type: ignore[assignment]
    for tee in tees:
        atexit.register(_finish_quietly, tee)
    return log


def _finish_quietly(tee: Tee) -> None:
    # At exit the terminal may already be closed; nothing is left to tell anyone then.
    with contextlib.suppress(OSError, ValueError):
        tee.finish()


TEE_MARKER = "PREFLIGHT_LOG_TEE"  # set for the exec'd program: its output already goes to the log file
_CHUNK = 65536


def _copy_streams(sources: dict[int, int], log: BinaryIO, redact: Redactor) -> None:
    """Copy each pipe, redacted, to its terminal descriptor and, as whole lines, to the log, until EOF.

    Redaction runs over each pipe's byte stream before it is cut into lines, so a secret spread over lines
    (a PEM key, a JSON credential) or over two reads never reaches either side. If the log cannot be written
    (a full logs volume), the copy to the terminal goes on: the program must never see a broken pipe
    because of it.
    """
    streams = {pipe: redact.byte_stream() for pipe in sources}
    log_pending = dict.fromkeys(sources, b"")
    open_pipes = set(sources)
    logging = True
    while open_pipes:
        ready, _, _ = select.select(list(open_pipes), [], [])
        for pipe in ready:
            chunk = os.read(pipe, _CHUNK)
            if chunk:
                clean = streams[pipe].feed(chunk)
            else:
                open_pipes.discard(pipe)
                clean = streams[pipe].finish()
            if clean:
                _write_all(sources[pipe], clean)
            if not logging:
                continue
            text = log_pending[pipe] + clean
            if not chunk and text:
                text += b"\n"  # the last line, unterminated
            *lines, log_pending[pipe] = text.split(b"\n")
            try:
                for line in lines:
                    # The log keeps only a line's final state, not each progress-bar redraw.
                    log.write(line.rsplit(b"\r", 1)[-1] + b"\n")
                if lines:
                    log.flush()
            except OSError as error:
                logging = False
                warning = f"WARNING: log file not written from here on: {error.strerror or error}\n"
                _write_all(2, warning.encode())


def _pass_through(sources: dict[int, int]) -> None:
    """The last resort if the copier itself fails: keep the program's output flowing, unlogged."""
    open_pipes = set(sources)
    while open_pipes:
        ready, _, _ = select.select(list(open_pipes), [], [])
        for pipe in ready:
            chunk = os.read(pipe, _CHUNK)
            if chunk:
                _write_all(sources[pipe], chunk)
            else:
                open_pipes.discard(pipe)


def _write_all(descriptor: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # a closed terminal must not stop the copy into the log
        while data:
            data = data[os.write(descriptor, data) :]


def tee_descriptors(
    log_dir: Path, redact: Redactor, not_for_copier: tuple[int, ...] = (), name: str = LOG_FILE_NAME
) -> bool:
    """Route this process's stdout and stderr through a small copier process into the log file too.

    Done right before exec, so the program that replaces us (any trainer command) is logged as well, while
    it keeps our PID and receives the container's signals itself. The copier ignores SIGTERM/SIGINT and ends
    when the program's output closes, so it never cuts the trainer's last lines. False when the log cannot
    be opened (output then stays as it is).
    """
    try:
        log = open(log_dir / name, "ab")  # noqa: SIM115 -- handed over to the copier process
    except OSError:
        return False
    pipes = {1: os.pipe(), 2: os.pipe()}
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        status = 0
        try:
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(number, signal.SIG_IGN)
            for descriptor in not_for_copier:
                # The run lock belongs to the trainer: the copier outlives it by a moment and must not hold it.
                with contextlib.suppress(OSError):
                    os.close(descriptor)
            for _, write_end in pipes.values():
                os.close(write_end)
            sources = {read_end: target for target, (read_end, _) in pipes.items()}
            try:
                _copy_streams(sources, log, redact)
            except Exception:
                _pass_through(sources)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    log.close()
    # From here the copier logs everything written to the descriptors: drop the Python-level tee so no line
    # is logged twice.
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, Tee):
            stream.finish()
            setattr(sys, name, stream._original)
    for target, (read_end, write_end) in pipes.items():
        os.dup2(write_end, target)
        os.close(read_end)
        os.close(write_end)
    os.environ[TEE_MARKER] = "1"
    return True
