"""One log file on the logs volume that the preflight and the trainer both append to.

Users `tail -f` and `grep` it, so every line is written whole, flushed at once and redacted.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TextIO

from entrypoint.naming import LOG_FILE_NAME
from entrypoint.redact import Redactor


class Tee:
    """A text stream that writes to the original stream and, redacted, to the log file."""

    def __init__(self, original: TextIO, log: TextIO, redact: Redactor) -> None:
        self._original = original
        self._log = log
        self._redact = redact
        self._lock = threading.Lock()
        self._pending = ""

    def write(self, text: str) -> int:
        clean = self._redact(text)
        self._original.write(clean)
        with self._lock:
            # tqdm redraws with "\r": keep only complete lines in the file so grep sees each once.
            self._pending += clean
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._log.write(line.rsplit("\r", 1)[-1] + "\n")
            if lines:
                self._log.flush()
        return len(text)

    def flush(self) -> None:
        self._original.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self._original, name)


def open_log(log_dir: Path) -> TextIO:
    """Open <log_dir>/training.log for appending, line-buffered."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return open(log_dir / LOG_FILE_NAME, "a", encoding="utf-8", buffering=1)


def tee_output(log_dir: Path, redact: Redactor) -> TextIO | None:
    """Send stdout and stderr to the log file too; None (and output unchanged) when it cannot be opened."""
    try:
        log = open_log(log_dir)
    except OSError:
        return None
    sys.stdout = Tee(sys.stdout, log, redact)  # type: ignore[assignment]
    sys.stderr = Tee(sys.stderr, log, redact)  # type: ignore[assignment]
    return log
