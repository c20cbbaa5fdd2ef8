"""The checkpoint manager on real files: atomic saves, the disk-space guard, validation before the rename,
retention, the retry of a final save whose commit failed, and the save on a stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint import durable
from entrypoint.durable import replace_via_temp
from entrypoint.naming import temp_target
from entrypoint.train import checkpoint_manager
from entrypoint.train.checkpoint_manager import (
    CheckpointManager,
    CheckpointWriter,
    numbered_checkpoints,
    quick_validate,
    remove_oldest,
)
from tests.mounts import tmpfs

torch = pytest.importorskip("torch")


def _state(megabytes: float = 1.0, update: int = 1) -> dict[str, object]:
    """A checkpoint shaped like F5-TTS's (the same keys), about `megabytes` in size."""
    count = int(megabytes * (1 << 20) / 8)
    return {
        "model_state_dict": {"w": torch.arange(count, dtype=torch.float32)},
        "optimizer_state_dict": {"state": {}, "param_groups": []},
        "ema_model_state_dict": {"initted": torch.tensor(True), "ema_model.w": torch.ones(count)},
        "scheduler_state_dict": {"last_epoch": update},
        "update": update,
    }


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if temp_target(p.name)]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB file system, to fill up for real."""
    with tmpfs(tmp_path / "tmpfs", "4m") as mount_point:
        yield mount_point


def test_save_replaces_final_name_with_complete_file_and_leaves_no_temp(tmp_path: Path) -> None:
    saver = CheckpointWriter(tmp_path, log=lambda _line: None)
    first = saver.save(_state(update=1), "model_last.pt")
    second = saver.save(_state(update=2), "model_last.pt")
    assert first.saved and first.valid and second.saved and second.valid
    assert torch.load(tmp_path / "model_last.pt", weights_only=True)["update"] == 2
    assert second.size == (tmp_path / "model_last.pt").stat().st_size == saver.last_size
    assert _temps(tmp_path) == []


def test_failed_write_keeps_previous_file_byte_identical(tmp_path: Path) -> None:
    final = tmp_path / "model_last.pt"
    torch.save(_state(update=7), final)
    before = final.read_bytes()

    def broken_write(temp: Path) -> None:
        temp.write_bytes(before[:1000])  # a partial file, then the writer dies
        raise OSError("simulated crash in the middle of a save")

    with pytest.raises(OSError, match="simulated"):
        replace_via_temp(final, broken_write, quick_validate)
    assert final.read_bytes() == before
    assert _temps(tmp_path) == []


def test_incomplete_write_is_never_renamed_over_the_final_name(tmp_path: Path) -> None:
    final = tmp_path / "model_last.pt"
    torch.save(_state(update=3), final)
    before = final.read_bytes()
    with pytest.raises(durable.NotValid, match="truncated"):
        replace_via_temp(final, lambda temp: temp.write_bytes(before[: len(before) // 2]), quick_validate)
    assert final.read_bytes() == before
    assert _temps(tmp_path) == []


def test_guard_skips_a_save_that_cannot_fit_and_keeps_previous(small_tmpfs: Path) -> None:
    lines: list[str] = []
    saver = CheckpointWriter(small_tmpfs, log=lines.append)
    assert saver.save(_state(1.5, update=1), "model_last.pt").valid
    before = (small_tmpfs / "model_last.pt").read_bytes()
    result = saver.save(_state(2.5, update=2), "model_last.pt")  # 1.5 + 2.5 MB do not fit in 4 MB
    assert not result.saved
    assert any("NOT SAVED model_last.pt" in line for line in lines)
    assert (small_tmpfs / "model_last.pt").read_bytes() == before
    assert _temps(small_tmpfs) == []


def test_real_enospc_during_write_keeps_previous(small_tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    saver = CheckpointWriter(small_tmpfs, log=lines.append)
    assert saver.save(_state(1.5, update=1), "model_last.pt").valid
    before = (small_tmpfs / "model_last.pt").read_bytes()
    # Turn the guard off so the write itself runs into the full disk (as when something else fills it).
    monkeypatch.setattr(checkpoint_manager, "bytes_needed", lambda _size: 0)
    result = saver.save(_state(2.5, update=2), "model_last.pt")
    assert not result.saved
    assert any("NOT SAVED" in line for line in lines)
    assert (small_tmpfs / "model_last.pt").read_bytes() == before
    assert _temps(small_tmpfs) == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-100], "truncated"),
        (lambda data: b"\0" * len(data), "zero-filled"),
        (lambda data: b"", "empty"),
    ],
)
def test_quick_validation_names_damage(tmp_path: Path, damage, expected: str) -> None:
    path = tmp_path / "model_1.pt"
    torch.save(_state(0.2), path)
    assert quick_validate(path) == (True, "")
    path.write_bytes(damage(path.read_bytes()))
    valid, cause = quick_validate(path)
    assert not valid and expected in cause


def test_estimate_is_close_to_the_real_size(tmp_path: Path) -> None:
    state = _state(3.0)
    torch.save(state, tmp_path / "x.pt")
    real = (tmp_path / "x.pt").stat().st_size
    assert real <= checkpoint_manager.estimate_save_size(state) <= real * 1.1


def test_rotation_keeps_newest_and_never_the_just_saved(tmp_path: Path) -> None:
    for update in (2, 4, 6, 8):
        torch.save(_state(0.01, update), tmp_path / f"model_{update}.pt")
    (tmp_path / "model_last.pt").write_bytes(b"x")
    (tmp_path / "pretrained_model_1.pt").write_bytes(b"x")
    removed = remove_oldest(tmp_path, 2, tmp_path / "model_8.pt", log=lambda _l: None)
    assert sorted(p.name for p in removed) == ["model_2.pt", "model_4.pt"]
    assert [u for u, _ in numbered_checkpoints(tmp_path)] == [6, 8]
    assert (tmp_path / "model_last.pt").exists() and (tmp_path / "pretrained_model_1.pt").exists()


def test_rotation_never_lets_a_newer_file_push_out_the_newest_valid(tmp_path: Path) -> None:
    for update in (2, 4):
        torch.save(_state(0.01, update), tmp_path / f"model_{update}.pt")
    (tmp_path / "model_9.pt").write_bytes(b"not a checkpoint")  # newer name, not valid
    remove_oldest(tmp_path, 1, tmp_path / "model_4.pt", log=lambda _l: None)
    assert (tmp_path / "model_4.pt").exists()
    assert not (tmp_path / "model_2.pt").exists()


def test_rotation_keep_all(tmp_path: Path) -> None:
    for update in (1, 2, 3):
        torch.save(_state(0.01, update), tmp_path / f"model_{update}.pt")
    assert remove_oldest(tmp_path, -1, tmp_path / "model_3.pt", log=lambda _l: None) == []
    assert len(numbered_checkpoints(tmp_path)) == 3


def test_file_failing_validation_never_replaces_the_previous_one(tmp_path: Path) -> None:
    # A complete zip that is not an F5-TTS checkpoint passes the end-record check but not the validator:
    # it must be rejected before the rename, so the good previous file stays.
    lines: list[str] = []
    saver = CheckpointWriter(tmp_path, log=lines.append)
    good = saver.save(_state(update=1), "model_last.pt")
    before = good.path.read_bytes()
    bad = saver.save({"not_a_checkpoint": torch.ones(4)}, "model_last.pt")
    assert not bad.saved and not bad.valid
    assert "does not validate" in bad.message and "previous file stays" in bad.message
    assert (tmp_path / "model_last.pt").read_bytes() == before
    assert _temps(tmp_path) == []


def test_failed_folder_fsync_after_the_rename_is_not_reported_as_not_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder fsync that fails cannot be produced on a healthy disk: simulated. The rename has happened,
    # so "NOT SAVED ... the previous file stays" would be false.
    def failing_fsync_folder(_folder: Path) -> None:
        raise OSError(5, "Input/output error")

    lines: list[str] = []
    saver = CheckpointWriter(tmp_path, log=lines.append)
    saver.save(_state(update=1), "model_last.pt")
    monkeypatch.setattr(durable, "fsync_folder", failing_fsync_folder)
    result = saver.save(_state(update=2), "model_last.pt")
    assert result.saved
    assert torch.load(tmp_path / "model_last.pt", weights_only=True)["update"] == 2
    text = "\n".join(lines)
    assert "NOT SAVED" not in text and "previous file stays" not in text
    assert "replaced the previous file" in text and "folder fsync failed" in text


# --- the manager's policy -------------------------------------------------------------------------------
class _States:
    """The trainer's state callable: a real checkpoint dict per update; counts how often it is gathered."""

    def __init__(self, broken_first: int = 0) -> None:
        self.calls: list[int] = []
        self._broken = broken_first

    def __call__(self, update: int) -> dict[str, object]:
        self.calls.append(update)
        if self._broken:
            self._broken -= 1
            return {"not_a_checkpoint": torch.ones(4)}  # a complete zip that does not validate
        return _state(0.05, update)


def _manager(folder: Path, lines: list[str], **options: object) -> CheckpointManager:
    return CheckpointManager(folder, log=lines.append, **{"keep_numbered": 2, **options})  # type: ignore[arg-type]


def test_last_and_numbered_saves_with_retention(tmp_path: Path) -> None:
    lines: list[str] = []
    manager = _manager(tmp_path, lines)
    states = _States()
    for update in range(1, 5):
        assert manager.save_numbered(update, states)
        assert manager.save_last(update, states)
    manager.close()
    assert [update for update, _ in numbered_checkpoints(tmp_path)] == [3, 4]
    assert torch.load(tmp_path / "model_last.pt", weights_only=True)["update"] == 4
    assert manager.last_saved_update == manager.last_started_update == 4
    assert "Saved checkpoint model_4.pt" in lines and "Saved last checkpoint at update 4" in lines
    assert "Removed old checkpoint: model_2.pt (KEEP_CHECKPOINTS=2)" in lines
    assert _temps(tmp_path) == []


def test_keep_zero_makes_no_numbered_saves_and_a_repeated_last_save_is_written_once(tmp_path: Path) -> None:
    lines: list[str] = []
    manager = _manager(tmp_path, lines, keep_numbered=0)
    states = _States()
    assert not manager.save_numbered(3, states)
    assert manager.save_last(3, states) and manager.save_last(3, states)
    assert manager.ensure_last(3, states)
    manager.close()
    assert states.calls == [3]  # gathered and written once
    assert numbered_checkpoints(tmp_path) == []


def test_final_save_whose_commit_failed_is_retried(tmp_path: Path) -> None:
    # The loop's own save at update 5 is written but fails validation (a real commit failure): the final
    # save must not take the started save for done.
    lines: list[str] = []
    manager = _manager(tmp_path, lines)
    states = _States(broken_first=1)
    assert manager.save_last(5, states)
    manager.wait()
    assert manager.last_started_update == 5 and manager.last_saved_update is None
    assert manager.ensure_last(5, states)
    manager.close()
    assert "Retrying the save of model_last.pt at update 5" in lines
    assert torch.load(tmp_path / "model_last.pt", weights_only=True)["update"] == 5


def test_final_save_that_fails_twice_says_so_and_keeps_the_previous_file(tmp_path: Path) -> None:
    lines: list[str] = []
    manager = _manager(tmp_path, lines)
    assert manager.ensure_last(4, _States())
    before = (tmp_path / "model_last.pt").read_bytes()
    assert not manager.ensure_last(6, _States(broken_first=2))
    manager.close()
    assert any(
        line.startswith(
            "WARNING: model_last.pt could not be saved at update 6; the newest saved state is update 4"
        )
        for line in lines
    )
    assert (tmp_path / "model_last.pt").read_bytes() == before
    assert _temps(tmp_path) == []


def test_save_on_stop_announces_itself_unless_that_update_was_saved_already(tmp_path: Path) -> None:
    lines: list[str] = []
    manager = _manager(tmp_path, lines, stopping=lambda: True)  # eager writeback while stopping
    states = _States()
    assert manager.save_on_stop(7, states, "SIGTERM")
    assert "Stopping (SIGTERM) at update 7: saving model_last.pt" in lines
    assert manager.save_last(8, states)
    lines.clear()
    assert manager.save_on_stop(8, states, "SIGTERM")
    manager.close()
    assert not any(line.startswith("Stopping") for line in lines)
    assert states.calls == [7, 8]
    assert torch.load(tmp_path / "model_last.pt", weights_only=True)["update"] == 8


def test_backups_after_last_saves_keep_the_newest(tmp_path: Path) -> None:
    from entrypoint.train.backups import BackupPolicy

    lines: list[str] = []
    backups = tmp_path / "backups"
    policy = BackupPolicy(backups, every_updates=2, keep=1, log=lines.append)
    manager = _manager(tmp_path / "output", lines, backups=policy)
    for update in range(1, 5):
        manager.save_last(update, _States())
        manager.wait()
    manager.close()
    assert sorted(p.name for p in backups.iterdir()) == ["model_4.pt"]
    assert f"Backup at update 4: {backups / 'model_4.pt'} (hard link)" in lines
    assert "Removed old backup: model_2.pt (BACKUP_KEEP=1)" in lines
