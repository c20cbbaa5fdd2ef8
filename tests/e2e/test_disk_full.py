"""OUTPUT_DIR on a small tmpfs that fills up during training: training goes on to MAX_UPDATES, saves that
cannot fit are skipped loudly, and no truncated or unfinished checkpoint is ever left behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.naming import temp_target
from entrypoint.train.safe_save import zip_structure_cause
from tests.trainer_data import load_checkpoint, run_training, tiny_settings, write_settings

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]

TMPFS_SIZE = "16m"  # room for about four 3.6 MB checkpoints of the tiny preset


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as a full disk needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_skips_saves_and_training_goes_on(dataset: Path, tmp_path: Path, small_disk: Path) -> None:
    values = tiny_settings(
        dataset,
        tmp_path,
        max_updates=12,
        last_every_updates=1,
        save_every_updates=1,
        keep_checkpoints=-1,
        checkpoint_size_gb=0.004,
    )
    values["OUTPUT_DIR"] = str(small_disk)
    result = run_training(write_settings(tmp_path, values), values)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Stopped by MAX_UPDATES=12 at update 12" in result.stdout  # training went on to the end
    assert "NOT SAVED" in result.stdout + result.stderr  # and the disk did fill up

    checkpoints = sorted(small_disk.glob("model_*.pt"))
    assert len(checkpoints) >= 2
    for path in checkpoints:
        assert zip_structure_cause(path) == "", path
        assert isinstance(load_checkpoint(path)["update"], int)
    assert [p.name for p in small_disk.iterdir() if temp_target(p.name)] == []
    assert 1 <= load_checkpoint(small_disk / "model_last.pt")["update"] < 12
