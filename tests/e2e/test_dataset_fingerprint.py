"""The dataset fingerprint: a run through `preflight run` records it; resuming after the batch settings or
the dataset changed is a WARN that names the change, resuming unchanged is OK."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_data import REPO_ROOT, run_training, tiny_settings, write_settings

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]


def check(env_file: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_") and k != "ENV_FILE"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "entrypoint", "check", "--json", "--env-file", str(env_file)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def fingerprint_results(report: dict[str, Any]) -> list[dict[str, str]]:
    return [c for c in report["checks"] if c["name"] == "fingerprint"]


def test_resume_after_the_batch_plan_changed_warns(dataset: Path, tmp_path: Path) -> None:
    values = tiny_settings(dataset, tmp_path, max_updates=2)
    env_file = write_settings(tmp_path, values)
    assert fingerprint_results(check(env_file)) == []  # nothing trained yet: nothing to compare
    trained = run_training(env_file)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    [same] = fingerprint_results(check(env_file))
    assert same["status"] == "ok" and "update 2" in same["message"]

    values["BATCH_SIZE"] = "4"
    [changed] = fingerprint_results(check(write_settings(tmp_path, values)))
    assert changed["status"] == "warn"
    assert (
        "BATCH_SIZE 2 -> 4" in changed["message"]
        and "batches per epoch per process 4 -> 2" in changed["message"]
    )

    values["BATCH_SIZE"] = "2"
    copy = tmp_path / "dataset-copy"
    copy.mkdir()
    for name in ("raw.arrow", "vocab.txt"):
        shutil.copyfile(dataset / name, copy / name)
    durations = json.loads((dataset / "duration.json").read_text())
    durations["duration"][0] += 0.01  # the audio of one clip was re-cut
    (copy / "duration.json").write_text(json.dumps(durations))
    values["DATASET_DIR"] = str(copy)
    [changed] = fingerprint_results(check(write_settings(tmp_path, values)))
    assert changed["status"] == "warn" and "duration.json changed" in changed["message"]
    assert "raw.arrow" not in changed["message"] and "vocab" not in changed["message"]
