"""`preflight settings`: every variable with its value and where it came from."""

from __future__ import annotations

import argparse
import sys

from entrypoint.errors import EXIT_OK

HELP = "list every variable with its value and origin"
EXAMPLE = "example: preflight settings --env-file .env | grep WORKERS"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("settings", help=HELP, description=HELP, epilog=EXAMPLE)
    parser.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    parser.add_argument("--markdown", action="store_true", help="the README's table of variables")
    parser.add_argument("--env-example", action="store_true", help="the text of .env.example")
    return parser


def run(args: argparse.Namespace) -> int:
    from entrypoint.commands.common import redactor_for
    from entrypoint.settings import load_settings
    from entrypoint.settings_docs import env_example, markdown_table

    if args.markdown or args.env_example:
        print(markdown_table() if args.markdown else env_example(), end="")
        return EXIT_OK
    loaded = load_settings(cli_env_file=args.env_file)
    redact = redactor_for(loaded)
    shown = loaded.settings.describe()
    width = max(len(name) for name in shown)
    for name, value in shown.items():
        print(redact(f"{name:<{width}}  {value:<40}  ({loaded.origins[name]})"))
    for warning in loaded.warnings:
        print(f"warning: {redact(warning)}", file=sys.stderr)
    return EXIT_OK
