"""`preflight check`: the report of what `run` would do, actions included; changes no file."""

from __future__ import annotations

import argparse
import json
import sys

from entrypoint.checkpoints.resolve import settle
from entrypoint.commands.common import add_env_options, make_plan, redactor_for
from entrypoint.errors import EXIT_CHECK_FAILED, EXIT_OK
from entrypoint.report import build_report, redact_tree, render_text, terminal_width
from entrypoint.settings import load_settings

HELP = "report what run would do (actions included); changes no file"
EXAMPLE = "example: preflight check --env-file .env --json | jq .actions"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("check", help=HELP, description=HELP, epilog=EXAMPLE)
    add_env_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    loaded = load_settings(cli_env_file=args.env_file)
    plan = make_plan(loaded)
    outcome = settle(plan.checkpoint, None, plan.settings)
    report = redact_tree(build_report(plan, outcome, "check"), redactor_for(loaded))
    print(json.dumps(report, indent=2) if args.json else render_text(report, terminal_width(sys.stdout)))
    return EXIT_CHECK_FAILED if report["status"] == "fail" else EXIT_OK
