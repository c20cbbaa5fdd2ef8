"""Subcommands of `preflight`, one module each: `add_parser(subparsers)` and `run(args) -> exit code`."""
