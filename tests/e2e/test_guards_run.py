"""A run that hangs, crashes in a loop or diverges, through `preflight run` as the container runs it.

Real failures, no mocks: a clip whose audio path is a FIFO with no writer (the DataLoader worker blocks in
open() forever), a clip that is not audio (the worker raises at the same update on every start), and an
absurd learning rate on the tiny preset (the loss and gradients overflow to Inf/NaN).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from entrypoint.errors import EXIT_CHECK_FAILED, EXIT_NON_FINITE, EXIT_STALLED
from entrypoint.ledger import read_ledger
from tests.trainer_data import (
    REPO_ROOT,
    RESUMED,
    load_checkpoint,
    run_training,
    tiny_settings,
    training_command,
    write_settings,
)

pytest.importorskip("f5_tts")
torch = pytest.importorskip("torch")

BAD_CLIP = 3  # the clip replaced by a FIFO or by bytes that are not audio


def dataset_with_bad_clip(dataset: Path, folder: Path, kind: str) -> Path:
    """A copy of the prepared dataset whose clip BAD_CLIP is a FIFO with no writer ("fifo") or a .wav
    file that does not decode ("garbage")."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    from entrypoint.train.data import RAW_ARROW

    folder.mkdir(parents=True)
    for name in os.listdir(dataset):
        if name != RAW_ARROW and (dataset / name).is_file():
            shutil.copy(dataset / name, folder / name)
    bad = folder / "bad.wav"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEnot audio at all" * 8)
    rows = Dataset.from_file(str(dataset / RAW_ARROW))
    with ArrowWriter(path=str(folder / RAW_ARROW)) as writer:
        for index, row in enumerate(rows):
            writer.write({**row, "audio_path": str(bad)} if index == BAD_CLIP else row)
        writer.finalize()
    return folder


def _ledger(values: dict[str, str]) -> list:
    return read_ledger(Path(values["OUTPUT_DIR"]) / "preflight" / "runs.json")


def _log(values: dict[str, str]) -> str:
    return (Path(values["LOG_DIR"]) / "training.log").read_text(encoding="utf-8", errors="replace")


def test_a_blocked_data_loader_is_ended_by_the_watchdog_with_stacks_in_the_log(
    dataset: Path, tmp_path: Path
) -> None:
    data = dataset_with_bad_clip(dataset, tmp_path / "data", "fifo")
    values = tiny_settings(
        data, tmp_path, stall_timeout_s=4, dataloader_timeout_s=0, max_updates=40, last_every_updates=1
    )
    # subprocess.run waits for EOF on the output pipes: a DataLoader worker left blocked on the FIFO would
    # hold them open and this call would time out instead of returning.
    result = run_training(write_settings(tmp_path, values), timeout=180)
    assert result.returncode == EXIT_STALLED, result.stdout[-2000:] + result.stderr[-3000:]
    log = _log(values)
    assert "STALL: no update completed for" in log
    assert re.search(r"Thread 0x[0-9a-f]+ \(most recent call first\)", log), log[-3000:]
    assert "stall-watchdog" in log or "watchdog.py" in log  # the monitor thread's own stack is there
    [record] = _ledger(values)
    assert (record.exit_code, record.outcome) == (EXIT_STALLED, "stall")
    heartbeat = json.loads((Path(values["OUTPUT_DIR"]) / "preflight" / "heartbeat.json").read_text())
    assert heartbeat["phase"] in ("train", "start") and heartbeat["pid"] == record.pid


def test_a_data_loader_timeout_is_a_stall_not_a_hang(dataset: Path, tmp_path: Path) -> None:
    data = dataset_with_bad_clip(dataset, tmp_path / "data", "fifo")
    values = tiny_settings(data, tmp_path, stall_timeout_s=0, dataloader_timeout_s=3, max_updates=40)
    result = run_training(write_settings(tmp_path, values), timeout=180)
    assert result.returncode == EXIT_STALLED, result.stdout[-2000:] + result.stderr[-3000:]
    assert "STALL: a DataLoader worker delivered no batch (DataLoader timed out after 3" in _log(values)


def test_a_crash_at_the_same_update_is_refused_after_the_limit_and_force_overrides(
    dataset: Path, tmp_path: Path
) -> None:
    data = dataset_with_bad_clip(dataset, tmp_path / "data", "garbage")
    values = tiny_settings(data, tmp_path, crash_loop_limit=2, max_updates=40)
    env_file = write_settings(tmp_path, values)
    resumed_from = []
    refused = None
    for _ in range(4):  # a save before the bad clip shifts the loop by one start; never more
        result = run_training(env_file, timeout=180)
        if result.returncode == EXIT_CHECK_FAILED:
            refused = result
            break
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
        match = RESUMED.search(result.stdout)
        resumed_from.append(int(match.group(2)) if match else 0)
    assert refused is not None, f"never refused; starts resumed from {resumed_from}"
    assert resumed_from[-1] == resumed_from[-2]
    output = refused.stdout + refused.stderr
    assert f"crash loop: the last 2 starts each resumed from update {resumed_from[-1]}" in output
    assert "exit 1 (crash: RuntimeError" in output  # how the runs ended, from the ledger
    assert "bad.wav" in output  # the failed runs' own log lines name the clip
    assert "preflight run --force" in output
    assert len(_ledger(values)) == len(resumed_from)  # a refused start is not recorded

    argv, env = training_command(env_file)
    forced = subprocess.run(
        [*argv, "--force"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert forced.returncode == 1, forced.stdout[-2000:] + forced.stderr[-2000:]
    assert "--force: starting anyway" in forced.stdout
    assert len(_ledger(values)) == len(resumed_from) + 1


def _all_finite(state: dict) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for part in ("model_state_dict", "ema_model_state_dict")
        for t in state[part].values()
        if t.is_floating_point()
    )


def test_a_diverging_run_stops_with_exit_6_and_keeps_the_last_good_save(
    dataset: Path, tmp_path: Path
) -> None:
    values = tiny_settings(
        dataset, tmp_path, learning_rate=1, warmup_updates=1, non_finite_limit=3, max_updates=60
    )
    result = run_training(write_settings(tmp_path, values), timeout=240)
    assert result.returncode == EXIT_NON_FINITE, result.stdout[-2000:] + result.stderr[-3000:]
    line = next(x for x in result.stderr.splitlines() if x.startswith("error: the "))
    assert "NaN/Inf for 3 updates in a row" in line and "lower LEARNING_RATE (now 1)" in line
    first_bad = int(re.search(r"updates (\d+)-\d+", line).group(1))
    last = load_checkpoint(Path(values["OUTPUT_DIR"]) / "model_last.pt")
    assert last["update"] < first_bad and _all_finite(last)  # no state of the non-finite updates was saved
    [record] = _ledger(values)
    assert (record.exit_code, record.outcome) == (EXIT_NON_FINITE, "non-finite")


def test_nan_weights_are_never_saved_over_a_checkpoint_or_a_backup(dataset: Path, tmp_path: Path) -> None:
    # NON_FINITE_LIMIT=0 never stops: every save after the weights turn NaN must be refused.
    values = tiny_settings(
        dataset,
        tmp_path,
        learning_rate=1,
        warmup_updates=1,
        non_finite_limit=0,
        max_updates=30,
        backup_every_updates=2,
        backup_keep=20,
    )
    result = run_training(write_settings(tmp_path, values), timeout=240)
    assert "Not saving at update" in result.stdout, result.stdout[-3000:]
    assert result.returncode == EXIT_NON_FINITE, result.stdout[-2000:] + result.stderr[-3000:]
    saved = [Path(values["OUTPUT_DIR"]) / "model_last.pt", *Path(values["BACKUP_DIR"]).rglob("*.pt")]
    assert len(saved) >= 2
    for path in saved:
        state = load_checkpoint(path)
        assert _all_finite(state), path
        assert math.isfinite(float(state["update"]))


def test_status_shows_the_ledger_the_newest_checkpoint_and_the_last_heartbeat(
    dataset: Path, tmp_path: Path
) -> None:
    values = tiny_settings(dataset, tmp_path, max_updates=6)
    env_file = write_settings(tmp_path, values)
    result = run_training(env_file, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    argv, env = training_command(env_file)
    status_argv = [*argv[:3], "status", "--env-file", str(env_file)]
    shown = subprocess.run([*status_argv, "--json"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["newest_valid_checkpoint"]["update"] == 6
    assert status["heartbeat"]["phase"] == "ended" and status["heartbeat"]["update"] == 6
    assert status["heartbeat"]["updates_per_s"] > 0
    [run] = status["runs"]
    assert (run["exit_code"], run["outcome"], run["resumed_from"], run["last_saved_update"]) == (
        0,
        "finished",
        0,
        6,
    )
    text = subprocess.run(status_argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert "newest valid checkpoint:" in text and "(update 6)" in text
    assert "resumed from update 0: exit 0 finished, saved update 6" in text
