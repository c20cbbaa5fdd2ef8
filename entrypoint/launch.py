"""Replace the preflight with the trainer, so the trainer gets the container's signals directly."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping

from entrypoint.errors import ExecFailed


def exec_trainer(argv: list[str], env: Mapping[str, str]) -> None:
    """os.execvpe never returns on success; a command that cannot start is an ExecFailed (exit 4)."""
    if not argv:
        raise ExecFailed("the trainer command is empty", "set TRAINER_COMMAND or pass a command after --")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, dict(env))
    except FileNotFoundError:
        if os.path.isfile(argv[0]):
            raise ExecFailed(
                f"trainer command {argv[0]!r} exists but its interpreter ({_shebang(argv[0])}) does not",
                "fix the #! line or install that interpreter",
            ) from None
        raise ExecFailed(
            f"trainer command {argv[0]!r} not found",
            "install it or fix TRAINER_COMMAND / the command after --",
        ) from None
    except PermissionError:
        if os.path.isdir(argv[0]):
            raise ExecFailed(f"trainer command {argv[0]!r} is a folder, not a program") from None
        raise ExecFailed(f"trainer command {argv[0]!r} is not executable", "check its permissions") from None
    except OSError as error:
        raise ExecFailed(f"trainer command {argv[0]!r} could not start: {error.strerror}") from None


def trainer_problem(argv: list[str], env: Mapping[str, str]) -> str | None:
    """Why `argv` could not be exec'd, found before anything is changed; None when it looks runnable."""
    if not argv:
        return "the trainer command is empty"
    program = argv[0]
    if os.sep in program:
        if os.path.isdir(program):
            return f"trainer command {program!r} is a folder, not a program"
        if not os.path.isfile(program):
            return f"trainer command {program!r} not found"
        if not os.access(program, os.X_OK):
            return f"trainer command {program!r} is not executable"
        return None
    if shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        return f"trainer command {program!r} not found on PATH"
    return None


def _shebang(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            first = handle.readline(200).decode("utf-8", "replace").strip()
    except OSError:
        return "unknown"
    return first[2:].strip() if first.startswith("#!") else "not a script"
