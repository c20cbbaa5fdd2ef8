"""Real training with backups on: verified BACKUP_DIR/model_<update>.pt appear at the interval, and
BACKUP_KEEP rotation keeps the newest ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint.train.checkpoint_manager import quick_validate
from tests.trainer_data import load_checkpoint, run_training, tiny_settings, write_settings

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]


def test_backups_appear_verified_and_rotation_keeps_the_newest(dataset: Path, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    values = tiny_settings(
        dataset,
        tmp_path,
        max_updates=6,
        last_every_updates=1,
        backup_every_updates=2,
        backup_keep=2,
        backup_dir=backups,
    )
    result = run_training(write_settings(tmp_path, values))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for update in (2, 4, 6):
        assert f"Backup at update {update}: {backups / f'model_{update}.pt'}" in result.stdout
    assert sorted(p.name for p in backups.iterdir()) == ["model_4.pt", "model_6.pt"]  # model_2.pt rotated
    for update in (4, 6):
        path = backups / f"model_{update}.pt"
        assert quick_validate(path) == (True, "")
        assert load_checkpoint(path)["update"] == update
