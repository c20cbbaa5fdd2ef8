"""`preflight run | check | validate | settings | status`: the entrypoint users and the container call."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

from entrypoint import __version__
from entrypoint.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    PreflightError,
)
from entrypoint.redact import Redactor, secret_values

COMMANDS = ("run", "check", "validate", "settings", "status", "vocab", "dataset")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"entrypoint.commands.{name}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflight",
        description="Check the container, choose a valid checkpoint and start F5-TTS training safely.",
        epilog="Exit codes: 0 ready, 1 invalid file (validate), 2 configuration error, 3 a check failed, "
        "4 the trainer could not be started, 8 the GPU no longer answers (run); the trainer: 5 final save "
        "failed, 6 NaN/Inf loss, 7 stalled (see README). Example: preflight check --env-file .env",
    )
    parser.add_argument("--version", action="version", version=f"preflight {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _module(name).add_parser(commands)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    own_args, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    if not own_args or (own_args[0].startswith("-") and own_args[0] not in ("-h", "--help", "--version")):
        own_args = ["run", *own_args]
    parser = _parser()
    args = parser.parse_args(own_args)
    if command is not None and args.command != "run":
        parser.error("a command after -- is only accepted by `run`")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        module = _module(args.command)
        return module.run(args, command) if args.command == "run" else module.run(args)
    except PreflightError as error:
        # A bad value may be a pasted secret: redact before printing, even before settings are loaded.
        redact = Redactor(secret_values(os.environ, _raw_env_file_values(args)))
        print(f"preflight: error: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("preflight: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print(
            "preflight: stopped by SIGTERM before the trainer started; nothing was left half-done",
            file=sys.stderr,
        )
        return EXIT_TERMINATED


class _Terminated(Exception):
    """SIGTERM (docker stop) while the preflight itself runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _raw_env_file_values(args: argparse.Namespace) -> dict[str, str]:
    """Best-effort raw values of the .env file, only to know which secrets to hide in an error message."""
    import io

    from dotenv.parser import parse_stream

    from entrypoint.errors import ConfigError
    from entrypoint.settings import read_env_text, resolve_env_file

    try:
        env_file, _ = resolve_env_file(getattr(args, "env_file", None), os.environ)
        if env_file is None or not env_file.is_file():
            return {}
        # The parser itself, not dotenv_values: it would log every unparsable line a second time.
        bindings = parse_stream(io.StringIO(read_env_text(env_file)))
        return {b.key: b.value or "" for b in bindings if not b.error and b.key}
    except (OSError, ValueError, ConfigError):
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
