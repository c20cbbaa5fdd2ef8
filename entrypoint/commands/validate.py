"""`preflight validate FILE ...`: validate checkpoint files (exit 0 when all are valid, 1 when not)."""

from __future__ import annotations

import argparse
from pathlib import Path

from entrypoint.errors import ConfigError

HELP = "validate checkpoint files: exit 0 if all are valid, 1 if not"
EXAMPLE = (
    "example: preflight validate --deep --preset F5TTS_v1_Base data/pretrained/model_1250000.safetensors"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("validate", help=HELP, description=HELP, epilog=EXAMPLE)
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--deep", action="store_true", help="also check the CRC32 of every member")
    parser.add_argument("--load", action="store_true", help="also torch.load(weights_only=True, mmap=True)")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--preset", help="check tensor shapes against this model preset")
    parser.add_argument("--vocab-file", help="vocabulary for the shape check (with --preset)")
    return parser


def run(args: argparse.Namespace) -> int:
    from entrypoint.checkpoints.validate import Expectation
    from entrypoint.checkpoints.validate_cli import run_validate
    from entrypoint.presets import PRESETS
    from entrypoint.vocab import vocabulary_size

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
                vocab_size = vocabulary_size(Path(args.vocab_file))
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"--vocab-file {args.vocab_file!r} cannot be read: {error}") from None
        expect = Expectation(args.preset, vocab_size)
    return run_validate(args.files, deep=args.deep, as_json=args.json, load=args.load, expect=expect)
