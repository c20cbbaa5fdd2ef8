"""OUTPUT_DIR on a small tmpfs that fills up during training: training goes on to MAX_UPDATES, saves that
cannot fit are skipped loudly, and no truncated or unfinished checkpoint is ever left behind."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.naming import temp_target
from entrypoint.train.checkpoint_manager import quick_validate
from entrypoint.train.driver import EXIT_LAST_NOT_SAVED
from tests.mounts import tmpfs
from tests.trainer_data import (
    load_checkpoint,
    run_training,
    start_training,
    tiny_settings,
    wait_for_line,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]

TMPFS_SIZE = "16m"  # room for about four 3.6 MB checkpoints of the tiny preset


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small-disk", TMPFS_SIZE) as mount_point:
        yield mount_point


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
    result = run_training(write_settings(tmp_path, values))
    # Whether the final save at update 12 still fits depends on which earlier saves were skipped; either
    # way the exit code must say which happened.
    assert result.returncode in (0, EXIT_LAST_NOT_SAVED), result.stdout[-3000:] + result.stderr[-3000:]
    assert "Stopped by MAX_UPDATES=12 at update 12" in result.stdout  # training went on to the end
    assert "NOT SAVED" in result.stdout + result.stderr  # and the disk did fill up
    final_saved = "model_last.pt could not be saved at update 12" not in result.stdout
    assert final_saved == (result.returncode == 0)

    checkpoints = sorted(small_disk.glob("model_*.pt"))
    assert len(checkpoints) >= 2
    for path in checkpoints:
        assert quick_validate(path) == (True, ""), path
        assert isinstance(load_checkpoint(path)["update"], int)
    assert [p.name for p in small_disk.iterdir() if temp_target(p.name)] == []
    last_update = load_checkpoint(small_disk / "model_last.pt")["update"]
    assert last_update == 12 if final_saved else 1 <= last_update < 12


def _fill(folder: Path, filler: Path) -> None:
    """Fill the file system of `folder` to the last byte through `filler` (appended to)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    try:
        while True:
            os.write(fd, b"\0")
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_disk_full_to_the_last_block_with_tensorboard_and_logs_on_it(
    dataset: Path, tmp_path: Path, small_disk: Path
) -> None:
    # Checkpoints, training.log and tensorboard events share the disk, and something else fills it
    # completely mid-run: tensorboard's stored ENOSPC must not kill training (it would, raised from the
    # next add_scalar); every save is skipped, training reaches MAX_UPDATES and exits with
    # EXIT_LAST_NOT_SAVED, because its final state could not be saved.
    values = tiny_settings(dataset, tmp_path, max_updates=10, last_every_updates=1, logger="tensorboard")
    values["OUTPUT_DIR"] = str(small_disk / "output")
    values["LOG_DIR"] = str(small_disk / "logs")
    process = start_training(write_settings(tmp_path, values), values)
    seen: list[str] = []
    try:
        wait_for_line(process, re.compile(r"Saved last checkpoint at update 2\b"), seen)
        _fill(small_disk, small_disk / "filler")
        # An open file's last block still has room: fill the tensorboard events file's too, or its small
        # records would go on fitting there for dozens of updates.
        for events in (small_disk / "logs" / "tensorboard").glob("events.out.tfevents*"):
            _fill(small_disk, events)
        rest, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stdout = "".join(seen) + rest
    assert process.returncode == EXIT_LAST_NOT_SAVED, stdout[-3000:]
    assert "Stopped by MAX_UPDATES=10 at update 10" in stdout  # training went on to the end
    assert stdout.count("WARNING: tensorboard events not written:") == 1, stdout[-3000:]
    assert "model_last.pt could not be saved at update 10" in stdout

    output = small_disk / "output"
    assert [p.name for p in output.iterdir() if temp_target(p.name)] == []
    for path in output.glob("model_*.pt"):
        assert quick_validate(path) == (True, ""), path
    assert 2 <= load_checkpoint(output / "model_last.pt")["update"] < 10
