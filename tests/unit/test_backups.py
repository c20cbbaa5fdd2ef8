"""Backups of model_last.pt: hard links on the same file system, durable copies elsewhere, rotation."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint import durable
from entrypoint.naming import temp_target
from entrypoint.train.backups import BackupPolicy, make_backup, same_file_system
from entrypoint.train.checkpoint_manager import CheckpointWriter

torch = pytest.importorskip("torch")


def _save_last(folder: Path, update: int) -> Path:
    weights = torch.full((1000,), float(update))
    state = {
        "model_state_dict": {"w": weights},
        "optimizer_state_dict": {"state": {}, "param_groups": []},
        "ema_model_state_dict": {"initted": torch.tensor(True), "ema_model.w": weights.clone()},
        "scheduler_state_dict": {"last_epoch": update},
        "update": update,
    }
    result = CheckpointWriter(folder, log=lambda _l: None).save(state, "model_last.pt")
    assert result.valid
    return result.path


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than tmp_path (/dev/shm is a tmpfs), removed afterwards."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or same_file_system(shm, tmp_path):
        pytest.skip("no second file system (/dev/shm) to copy to")
    folder = Path(tempfile.mkdtemp(prefix="backup-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_same_file_system_backup_is_a_hard_link_that_survives_the_next_save(tmp_path: Path) -> None:
    output, backups = tmp_path / "output", tmp_path / "backups"
    last = _save_last(output, 5)
    result = make_backup(last, backups, 5)
    assert result.made and result.method == "hard link"
    assert result.path == backups / "model_5.pt"
    assert result.path.stat().st_ino == last.stat().st_ino
    _save_last(output, 6)  # replaces model_last.pt by rename: a new inode
    assert torch.load(result.path, weights_only=True)["update"] == 5
    assert torch.load(last, weights_only=True)["update"] == 6


def test_other_file_system_backup_is_a_verified_copy(tmp_path: Path, other_file_system: Path) -> None:
    last = _save_last(tmp_path / "output", 3)
    result = make_backup(last, other_file_system, 3)
    assert result.made and result.method == "copy"
    assert result.path.read_bytes() == last.read_bytes()
    assert [p.name for p in other_file_system.iterdir() if temp_target(p.name)] == []


def test_policy_backs_up_when_due_and_keeps_newest(tmp_path: Path) -> None:
    output, backups = tmp_path / "output", tmp_path / "backups"
    policy = BackupPolicy(backups, every_updates=2, keep=2, log=lambda _l: None)
    for update in range(1, 9):
        last = _save_last(output, update)
        result = policy.after_last_save(last, update)
        assert (result is not None) == (update % 2 == 0)
    assert sorted(p.name for p in backups.iterdir()) == ["model_6.pt", "model_8.pt"]
    assert torch.load(backups / "model_8.pt", weights_only=True)["update"] == 8


def test_policy_never_and_while_stopping(tmp_path: Path, other_file_system: Path) -> None:
    last = _save_last(tmp_path / "output", 4)
    assert BackupPolicy(other_file_system, 0, 3, log=lambda _l: None).after_last_save(last, 4) is None
    # While stopping only an instant hard link is allowed: a copy to another disk would stretch the stop.
    result = BackupPolicy(other_file_system, 2, 3, log=lambda _l: None).after_last_save(
        last, 4, stopping=True
    )
    assert result is not None and not result.made
    assert list(other_file_system.iterdir()) == []


def test_backup_into_the_checkpoint_folder_itself_is_refused(tmp_path: Path) -> None:
    last = _save_last(tmp_path, 2)
    result = make_backup(last, tmp_path, 2)
    assert not result.made
    assert not (tmp_path / "model_2.pt").exists()


def test_bind_mount_of_the_same_file_system_falls_back_to_a_copy(tmp_path: Path) -> None:
    # Containers often mount two folders of one disk separately: same st_dev, but link() gives EXDEV.
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    real, mount_point = tmp_path / "real-backups", tmp_path / "backups"
    real.mkdir()
    mount_point.mkdir()
    if subprocess.run(["mount", "--bind", str(real), str(mount_point)], check=False).returncode != 0:
        pytest.skip("bind mounts are not permitted here")
    try:
        last = _save_last(tmp_path / "output", 3)
        result = make_backup(last, mount_point, 3)
        assert result.made and result.method == "copy", result.message
        assert (real / "model_3.pt").read_bytes() == last.read_bytes()
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_copy_gives_way_to_a_stop_request_and_leaves_previous_backups(
    tmp_path: Path, other_file_system: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy already running on the commit thread when SIGTERM arrives must not stretch the stop by a whole
    # (multi-GB) copy: it checks the request between chunks (small chunks here, for a small file).
    monkeypatch.setattr(durable, "COPY_CHUNK_BYTES", 1024)
    output = tmp_path / "output"
    policy_log: list[str] = []
    checks: list[int] = []

    def stop_after_two_chunks() -> bool:
        checks.append(1)
        return len(checks) > 2

    first = make_backup(_save_last(output, 2), other_file_system, 2)
    assert first.made and first.method == "copy"
    policy = BackupPolicy(other_file_system, 2, 3, log=policy_log.append, should_abort=stop_after_two_chunks)
    result = policy.after_last_save(_save_last(output, 4), 4)
    assert result is not None and not result.made
    assert len(checks) == 3  # stopped at the third chunk, not after the whole file
    assert "abandoned" in result.message and any("abandoned" in line for line in policy_log)
    assert sorted(p.name for p in other_file_system.iterdir()) == ["model_2.pt"]  # no temp file left
    assert torch.load(other_file_system / "model_2.pt", weights_only=True)["update"] == 2
