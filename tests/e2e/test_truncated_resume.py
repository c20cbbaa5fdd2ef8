"""A truncated newest checkpoint is quarantined by the preflight and training resumes from the previous one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer_data import (
    RESUMED,
    load_checkpoint,
    run_training,
    tiny_settings,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]


def test_truncated_model_last_is_quarantined_and_training_resumes_from_previous(
    dataset: Path, tmp_path: Path
) -> None:
    values = tiny_settings(dataset, tmp_path, max_updates=5, last_every_updates=1, save_every_updates=2)
    env_file = write_settings(tmp_path, values)
    first = run_training(env_file)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    output = Path(values["OUTPUT_DIR"])
    last = output / "model_last.pt"
    assert load_checkpoint(last)["update"] == 5
    assert load_checkpoint(output / "model_4.pt")["update"] == 4

    data = last.read_bytes()
    truncated = data[: len(data) // 3]
    last.write_bytes(truncated)  # what a kill during a stock F5-TTS save leaves behind

    values["MAX_UPDATES"] = "7"
    env_file = write_settings(tmp_path, values)
    second = run_training(env_file)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = RESUMED.search(second.stdout)
    assert resumed, second.stdout[-3000:]
    assert Path(resumed.group(1)) == output / "model_4.pt"
    assert int(resumed.group(2)) == 4

    quarantined = [p for p in tmp_path.rglob("model_last.pt*.corrupted") if p.is_file()]
    assert len(quarantined) == 1, sorted(str(p) for p in tmp_path.rglob("*"))
    assert quarantined[0].read_bytes() == truncated  # moved, not changed
    assert load_checkpoint(last)["update"] == 7  # a new, valid model_last.pt
