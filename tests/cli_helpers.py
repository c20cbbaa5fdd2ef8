"""Running the real `preflight` command in a test folder, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_dataset(folder: Path) -> None:
    """A minimal prepared-dataset layout: enough for the dataset check, not for training."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raw.arrow").write_bytes(b"arrow")
    (folder / "duration.json").write_text('{"duration": [1.0]}')
    (folder / "vocab.txt").write_text(" \na\nb\n")


def preflight(
    workspace: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m entrypoint ARGS` in `workspace`, with this tree's package and none of the caller's settings."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("PREFLIGHT_", "WANDB"))}
    base.pop("ENV_FILE", None)
    base["PYTHONPATH"] = str(ROOT)  # this tree's package, whatever is installed
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", *args],
        cwd=workspace,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def env_args(workspace: Path) -> list[str]:
    return ["--env-file", str(workspace / "test.env")]
