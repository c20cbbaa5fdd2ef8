"""The trainer's entry: it starts only from the preflight's handoff, in one line when that is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.errors import EXIT_CONFIG
from entrypoint.handoff import HANDOFF_VARIABLE
from entrypoint.train.driver import main
from tests.trainer_data import REPO_ROOT


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, f"{HANDOFF_VARIABLE} is not set"),
        ({HANDOFF_VARIABLE: "/nonexistent/handoff.json"}, "does not exist"),
        (
            {"PREFLIGHT_CHECKPOINT": "", "PREFLIGHT_CHECKPOINT_KIND": "scratch"},
            f"{HANDOFF_VARIABLE} is not set",
        ),
    ],
)
def test_without_a_handoff_the_trainer_refuses_in_one_line(
    environ: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(environ) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "preflight run" in err


def test_a_handoff_that_is_not_the_document_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "handoff.json"
    path.write_text('{"schema": 2, "checkpoint": null}', encoding="utf-8")
    assert main({HANDOFF_VARIABLE: str(path)}) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is missing" in err


def test_importing_the_driver_does_not_import_torch() -> None:
    code = "import sys, entrypoint.train.driver; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
