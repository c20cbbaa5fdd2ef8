"""Fast checks of the trainer's guards on real parts: the tensorboard writer on a full disk, and a prepared
dataset whose audio paths do not exist where the trainer reads it."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.errors import EXIT_CHECK_FAILED, CheckFailed
from entrypoint.train.metrics import GuardedWriter
from tests.mounts import tmpfs

pytest.importorskip("f5_tts")
torch = pytest.importorskip("torch")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tiny-disk", "64k") as mount_point:
        yield mount_point


def test_tensorboard_on_a_full_disk_warns_once_and_stops_logging(tiny_tmpfs: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    lines: list[str] = []
    writer = GuardedWriter(SummaryWriter(log_dir=str(tiny_tmpfs / "tensorboard")), log=lines.append)
    filler = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while True:
            os.write(filler, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(filler)
    for step in range(200):  # tensorboard raises the stored ENOSPC on a later call: none may escape
        writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.flush()
    writer.close()
    warnings = [line for line in lines if line.startswith("WARNING: tensorboard events not written:")]
    assert len(warnings) == 1, lines
    assert not writer.enabled


def test_guarded_writer_passes_calls_through_while_healthy(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    lines: list[str] = []
    writer = GuardedWriter(SummaryWriter(log_dir=str(tmp_path)), log=lines.append)
    writer.add_scalar("loss", 0.5, 1)
    writer.close()
    assert lines == []
    assert any(p.name.startswith("events.out.tfevents") and p.stat().st_size > 0 for p in tmp_path.iterdir())


def test_dataset_with_audio_missing_at_its_stored_paths_fails_in_one_line(
    dataset: Path, tmp_path: Path
) -> None:
    # prepare_csv_wavs stores absolute audio paths: a dataset prepared elsewhere and mounted here.
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    from entrypoint.presets import MEL_SPEC_KWARGS
    from entrypoint.train.data import DURATION_JSON, RAW_ARROW, load_train_dataset

    rows = Dataset.from_file(str(dataset / RAW_ARROW))
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(dataset / DURATION_JSON, moved / DURATION_JSON)
    with ArrowWriter(path=str(moved / RAW_ARROW)) as writer:
        for index, row in enumerate(rows):
            if index >= 2:  # the first two clips still exist, the rest were prepared "on the host"
                row = {**row, "audio_path": f"/host/home/user/wavs/clip{index}.wav"}
            writer.write(row)
        writer.finalize()

    with pytest.raises(CheckFailed) as raised:
        load_train_dataset(moved, dict(MEL_SPEC_KWARGS))
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_CHECK_FAILED
    assert "\n" not in message
    assert f"{len(rows) - 2} of {len(rows)} audio files" in message
    assert "/host/home/user/wavs/clip2.wav" in message
    assert "prepare the dataset where it will be read" in message
    assert len(load_train_dataset(dataset, dict(MEL_SPEC_KWARGS))) == len(rows)  # the real one loads


@pytest.mark.slow
def test_final_save_is_retried_when_the_started_save_did_not_commit(dataset: Path, tmp_path: Path) -> None:
    # A save started at update 5 whose commit failed (fsync or rename error) leaves last_started_update=5:
    # the trainer's final save must not take it for done (the manager's side: test_checkpoint_manager).
    from entrypoint.handoff import read_handoff
    from entrypoint.train.driver import build_model, build_trainer
    from entrypoint.train.graceful import StopRequest
    from tests.trainer_data import load_checkpoint, tiny_settings, write_handoff_for

    values = tiny_settings(dataset, tmp_path)
    handoff = read_handoff(write_handoff_for(values, None, tmp_path / "preflight"))
    trainer = build_trainer(handoff, build_model(handoff), StopRequest())
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda _step: 1.0
    )  # made by train()
    trainer.checkpoints.last_started_update = 5  # started, never committed
    assert trainer.checkpoints.last_saved_update is None

    assert trainer.save_last_and_wait(5)
    trainer.checkpoints.close()
    assert trainer.checkpoints.last_saved_update == 5
    assert load_checkpoint(handoff.output_dir / "model_last.pt")["update"] == 5
