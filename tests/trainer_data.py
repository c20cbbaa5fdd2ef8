"""Helpers for tests that run the real trainer: a tiny dataset, .env files, and starting a training run.

`make_tiny_dataset(folder)` is cache-friendly: a folder that already holds a finished dataset is reused, so
pass a session-wide folder (e.g. `tmp_path_factory.getbasetemp() / "tiny-dataset"`) to prepare it once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from entrypoint.settings import SPEC_BY_NAME
from tools.demo import make_synthetic_dataset, tiny_cpu_settings, write_env_file

REPO_ROOT = Path(__file__).resolve().parent.parent
RESUMED = re.compile(r"Resuming from (\S+) at update (\d+) \(weights fingerprint (\S+)\)")
SAVED_LAST = re.compile(r"Saved last checkpoint at update (\d+)")
STOPPED = re.compile(r"Stopped by (\S+) at update (\d+)")


def make_tiny_dataset(folder: Path, clips: int = 8) -> Path:
    """A real prepared dataset (raw.arrow, duration.json, vocab.txt) of synthetic clips; returns its folder."""
    return make_synthetic_dataset(folder, clips)


def tiny_settings(dataset: Path, root: Path, **overrides: Any) -> dict[str, str]:
    """The demo's fast CPU run of the `tiny` preset with everything under `root`, without numbered saves or
    backups unless asked; `overrides` (lower-case names welcome) replace any value."""
    values = {
        **tiny_cpu_settings(dataset, root),
        "SAVE_EVERY_UPDATES": "1000",
        "KEEP_CHECKPOINTS": "-1",
        "BACKUP_EVERY_UPDATES": "0",
        "TORCH_THREADS": "1",
        "WAIT_TIMEOUT_S": "0",
    }
    values.update({key.upper(): str(value) for key, value in overrides.items()})
    return values


def write_settings(root: Path, values: dict[str, str]) -> Path:
    return write_env_file(root / "test.env", values)


def _clean_environment() -> dict[str, str]:
    # Settings and PREFLIGHT_* from the developer's shell must not leak into a test run.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SPEC_BY_NAME and not key.startswith("PREFLIGHT_") and key != "ENV_FILE"
    }
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def training_command(env_file: Path) -> tuple[list[str], dict[str, str]]:
    """`preflight run --env-file`: every end-to-end run goes through the preflight, as in the container."""
    return [sys.executable, "-m", "entrypoint", "run", "--env-file", str(env_file)], _clean_environment()


def write_handoff_for(values: dict[str, str], checkpoint: Path | None, folder: Path) -> dict[str, str]:
    """For tests that start the trainer in-process, without `preflight run` (the kill -9 fork server): the
    handoff document the preflight would write for `values` loading `checkpoint`; returns its variables."""
    from entrypoint.checkpoints.validate import validate_file
    from entrypoint.handoff import Handoff, TrainingOptions, handoff_path, write_handoff
    from entrypoint.settings import load_settings

    settings = load_settings(values).settings
    update = validate_file(checkpoint).update if checkpoint is not None else 0
    handoff = Handoff(
        checkpoint=checkpoint,
        checkpoint_kind="training" if checkpoint is not None else "scratch",
        checkpoint_update=update or 0,
        workers=1,
        torch_threads=1,
        processes=1,
        mixed_precision="no",
        output_dir=settings.output_dir,
        backup_dir=settings.backup_dir,
        dataset_dir=settings.dataset_dir,
        log_dir=settings.log_dir,
        vocab_file=settings.vocab_file or settings.dataset_dir / "vocab.txt",
        report=folder / "report.json",
        training=TrainingOptions.from_settings(settings),
        preflight_version="test",
    )
    path = handoff_path(folder)
    write_handoff(path, handoff)
    return handoff.environment(path)


def run_training(env_file: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    argv, env = training_command(env_file)
    return subprocess.run(
        argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_training(env_file: Path, values: dict[str, str]) -> subprocess.Popen[str]:
    """Start a run with stdout (trainer lines) piped; stderr (progress bars) goes to a file in LOG_DIR."""
    argv, env = training_command(env_file)
    log_dir = Path(values["LOG_DIR"])
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr = open(log_dir / "stderr.txt", "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_for_line(process: subprocess.Popen[str], pattern: re.Pattern[str], seen: list[str]) -> re.Match[str]:
    """Read the process's stdout until a line matches; every line read is appended to `seen`."""
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        match = pattern.search(line)
        if match:
            return match
    raise AssertionError(f"the trainer ended without printing {pattern.pattern!r}:\n{''.join(seen)[-3000:]}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, weights_only=True, map_location="cpu")


def fingerprint(state_dict: dict[str, Any]) -> float:
    """The same sum the trainer prints when it resumes (entrypoint.train.safe_trainer.weights_fingerprint)."""
    from entrypoint.train.safe_trainer import weights_fingerprint

    return weights_fingerprint(state_dict)
