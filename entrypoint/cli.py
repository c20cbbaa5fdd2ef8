"""`preflight run | check | validate | settings`: the entrypoint users and the container call."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence

from entrypoint import __version__
from entrypoint.commands import dataset as dataset_command
from entrypoint.commands import vocab as vocab_command
from entrypoint.errors import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    PreflightError,
)
from entrypoint.redact import Redactor, secret_values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflight",
        description="Check the container, choose a valid checkpoint and start F5-TTS training safely.",
        epilog="Exit codes: 0 ready, 1 invalid file (validate), 2 configuration error, 3 a check failed, "
        "4 the trainer could not be started.",
    )
    parser.add_argument("--version", action="version", version=f"preflight {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in (
        ("run", "check, quarantine bad checkpoints, then exec the trainer (default) [-- CMD ...]"),
        ("check", "report what run would do; changes no file"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
    validate = commands.add_parser(
        "validate", help="validate checkpoint files: exit 0 if all are valid, 1 if not"
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--deep", action="store_true", help="also check the CRC32 of every member")
    validate.add_argument("--load", action="store_true", help="also torch.load(weights_only=True, mmap=True)")
    validate.add_argument("--json", action="store_true", help="print a JSON list")
    validate.add_argument("--preset", help="check tensor shapes against this model preset")
    validate.add_argument("--vocab-file", help="vocabulary for the shape check (with --preset)")
    vocab_command.add_parser(commands)  # vocab extend (entrypoint/commands/vocab.py)
    dataset_command.add_parser(commands)  # dataset scan (entrypoint/commands/dataset.py)
    settings = commands.add_parser("settings", help="list every variable with its value and origin")
    settings.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    settings.add_argument("--markdown", action="store_true", help="the README's table of variables")
    settings.add_argument("--env-example", action="store_true", help="the text of .env.example")
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, None


def _run_or_check(args: argparse.Namespace, command: list[str] | None) -> int:
    from entrypoint.launch import exec_trainer
    from entrypoint.logfile import TEE_MARKER, tee_descriptors, tee_output
    from entrypoint.preflight import run_preflight
    from entrypoint.report import build_report, redact_tree, render_text, write_report
    from entrypoint.settings import load_settings

    apply = args.command == "run"
    loaded = load_settings(cli_env_file=args.env_file)
    redact = Redactor(secret_values(os.environ, loaded.file_values))
    if apply:
        tee_output(loaded.settings.log_dir, redact)
    result = run_preflight(loaded, apply=apply, command=command)
    report = redact_tree(build_report(result), redact)
    text = render_text(report)
    if apply:
        problem = write_report(result.report_dir, report, text)
        if problem:
            text += f"\n  note: {problem}"
    if args.json:
        print(json.dumps(report, indent=2))
        if apply:
            print(text, file=sys.stderr)
    else:
        print(text)
    if result.status == "fail":
        return EXIT_CHECK_FAILED
    if apply:
        if tee_descriptors(loaded.settings.log_dir, redact):
            result.env[TEE_MARKER] = "1"
        exec_trainer(result.argv, result.env)
    return EXIT_OK


def _settings(args: argparse.Namespace) -> int:
    from entrypoint.settings import load_settings
    from entrypoint.settings_docs import env_example, markdown_table

    if args.markdown or args.env_example:
        print(markdown_table() if args.markdown else env_example(), end="")
        return EXIT_OK
    loaded = load_settings(cli_env_file=args.env_file)
    redact = Redactor(secret_values(os.environ, loaded.file_values))
    shown = loaded.settings.describe()
    width = max(len(name) for name in shown)
    for name, value in shown.items():
        print(redact(f"{name:<{width}}  {value:<40}  ({loaded.origins[name]})"))
    for warning in loaded.warnings:
        print(f"warning: {redact(warning)}", file=sys.stderr)
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from entrypoint.checkpoints.validate import Expectation
    from entrypoint.checkpoints.validate_cli import run_validate
    from entrypoint.errors import ConfigError
    from entrypoint.presets import PRESETS, vocab_size_of

    expect = None
    if args.vocab_file and not args.preset:
        raise ConfigError(
            "--vocab-file needs --preset: the vocabulary size is checked against a model preset."
        )
    if args.preset:
        if args.preset not in PRESETS:
            raise ConfigError(
                f"--preset {args.preset!r} is not allowed: expected one of {', '.join(PRESETS)}."
            )
        vocab_size = None
        if args.vocab_file:
            try:
                vocab_size = vocab_size_of(Path(args.vocab_file).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"--vocab-file {args.vocab_file!r} cannot be read: {error}") from None
        expect = Expectation(args.preset, vocab_size)
    return run_validate(args.files, deep=args.deep, as_json=args.json, load=args.load, expect=expect)


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
        if args.command in ("run", "check"):
            return _run_or_check(args, command)
        if args.command == "validate":
            return _validate(args)
        if args.command == "vocab":
            return vocab_command.run(args)
        if args.command == "dataset":
            return dataset_command.run(args)
        return _settings(args)
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

    from entrypoint.settings import resolve_env_file

    try:
        env_file, _ = resolve_env_file(getattr(args, "env_file", None), os.environ)
        if env_file is None or not env_file.is_file():
            return {}
        # The parser itself, not dotenv_values: it would log every unparsable line a second time.
        bindings = parse_stream(io.StringIO(env_file.read_text(encoding="utf-8")))
        return {b.key: b.value or "" for b in bindings if not b.error and b.key}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}


if __name__ == "__main__":
    raise SystemExit(main())

assert EXIT_CONFIG == 2  # argparse exits with 2 on a bad command line, the same code as a bad setting
