"""Real F5-TTS training on the CPU, started through `preflight run`: a second run resumes where the first
stopped, with the saved weights and optimizer state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer_data import (
    RESUMED,
    fingerprint,
    load_checkpoint,
    run_training,
    tiny_settings,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]


def test_second_run_resumes_at_saved_update_with_saved_weights(dataset: Path, tmp_path: Path) -> None:
    values = tiny_settings(dataset, tmp_path, max_updates=4, last_every_updates=2, logger="tensorboard")
    env_file = write_settings(tmp_path, values)
    first = run_training(env_file)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # The output says what is really logged, and nothing that is not the user's business.
    events = Path(values["LOG_DIR"]) / "tensorboard"
    assert f"Metrics: tensorboard events in {events}" in first.stdout
    assert any(p.name.startswith("events.out.tfevents") for p in events.iterdir())
    assert "Using logger: None" not in first.stdout
    assert "pin_memory" not in first.stderr
    last = Path(values["OUTPUT_DIR"]) / "model_last.pt"
    saved = load_checkpoint(last)
    assert saved["update"] == 4
    assert set(saved) == {
        "model_state_dict",
        "optimizer_state_dict",
        "ema_model_state_dict",
        "scheduler_state_dict",
        "update",
    }  # the keys stock F5-TTS reads

    values["MAX_UPDATES"] = "6"
    env_file = write_settings(tmp_path, values)
    second = run_training(env_file)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = RESUMED.search(second.stdout)
    assert resumed, second.stdout[-3000:]
    assert Path(resumed.group(1)) == last
    assert int(resumed.group(2)) == 4
    assert float(resumed.group(3)) == pytest.approx(fingerprint(saved["model_state_dict"]), rel=1e-9)

    after = load_checkpoint(last)
    assert after["update"] == 6
    # The optimizer and scheduler continued from the saved state: 6 steps in all, not 2.
    steps = {float(state["step"]) for state in after["optimizer_state_dict"]["state"].values()}
    assert steps == {6.0}
    assert after["scheduler_state_dict"]["last_epoch"] == 6
    # The EMA continued too: its update counter counts all 6 updates (2 if it had restarted), and the
    # resumed EMA weights started from the saved ones, not from a copy of the model.
    saved_ema, after_ema = saved["ema_model_state_dict"], after["ema_model_state_dict"]
    assert bool(saved_ema["initted"]) and bool(after_ema["initted"])
    assert int(saved_ema["step"]) > 0
    assert int(after_ema["step"]) == int(saved_ema["step"]) + 2
    log = (Path(values["LOG_DIR"]) / "training.log").read_text(encoding="utf-8")
    assert "Resuming from" in log and "Stopped by MAX_UPDATES=6 at update 6" in log
