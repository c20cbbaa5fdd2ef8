"""Every subcommand explains itself with an example in its --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_has_an_example(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entrypoint", command, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert f"example: preflight {command}" in done.stdout, done.stdout
