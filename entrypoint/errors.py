"""Exit codes and the exceptions that map to them.

Every expected failure is one of these: the CLI prints its one-line message and exits with its code,
never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID_FILES = 1  # `preflight validate`: at least one file is not a valid checkpoint
EXIT_CONFIG = 2  # a setting has a bad value, or the command line is wrong
EXIT_CHECK_FAILED = 3  # a system or checkpoint check failed: training would not have worked
EXIT_EXEC_FAILED = 4  # the trainer command could not be started (not found, not executable)
# The trainer's own codes (the preflight never exits with these):
EXIT_LAST_NOT_SAVED = 5  # training ended but its final model_last.pt could not be saved
EXIT_NON_FINITE = 6  # the loss or gradient norm stayed NaN/Inf: stopped without saving that state
EXIT_STALLED = 7  # no update completed within the stall timeout (or a DataLoader worker timed out)
EXIT_GPU_GONE = 8  # `run`: after a failed run the GPU no longer answers; only a reset of the VM/host helps
EXIT_INTERRUPTED = 130  # Ctrl-C during the preflight itself
EXIT_TERMINATED = 143  # SIGTERM (docker stop) during the preflight itself


class PreflightError(Exception):
    """An expected failure with a one-line message and a documented exit code."""

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} -- {self.fix}" if self.fix else self.message


class ConfigError(PreflightError):
    """A setting or command-line value that is not allowed (exit 2)."""

    exit_code = EXIT_CONFIG


class CheckFailed(PreflightError):
    """A check found that training cannot start safely (exit 3)."""

    exit_code = EXIT_CHECK_FAILED


class ExecFailed(PreflightError):
    """The trainer command could not be executed (exit 4)."""

    exit_code = EXIT_EXEC_FAILED
