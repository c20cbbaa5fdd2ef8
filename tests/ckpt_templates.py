"""Real checkpoint files made once per test module and copied where a test needs them.

Building and saving through tests/ckpt_factory.py costs a few seconds (importing F5-TTS); copying a 3.6 MB
template costs a millisecond, so each test gets its own files without paying the build again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from entrypoint.checkpoints.resolve import CheckpointOutcome
from entrypoint.checkpoints.validate import validate_file
from entrypoint.checkpoints.verdict import Verdict
from entrypoint.settings import Settings, load_settings

TRAINING_UPDATES = (100, 200, 300, 400)


def build_templates(folder: Path) -> dict[str, Path]:
    """Training checkpoints (keys "100".."400"), pretrained .pt ("pre_pt") and .safetensors ("pre_st")."""
    from tests.ckpt_factory import make_pretrained_checkpoint, make_training_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    made = {str(u): make_training_checkpoint(folder / f"train_{u}.pt", update=u) for u in TRAINING_UPDATES}
    made["pre_pt"] = make_pretrained_checkpoint(folder / "pre.pt", fmt="pt")
    made["pre_st"] = make_pretrained_checkpoint(folder / "pre.safetensors", fmt="safetensors")
    return made


def place(template: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return target


def flip_tensor_byte(path: Path) -> None:
    """Change one byte inside the largest tensor: the file stays structurally whole, only its CRC disagrees."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len = int.from_bytes(handle.read(2), "little")
        extra_len = int.from_bytes(handle.read(2), "little")
        offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
        handle.flush()
        os.fsync(handle.fileno())


def make_settings(tmp_path: Path, **values: str) -> Settings:
    """Settings as a run would load them, with OUTPUT_DIR/BACKUP_DIR under tmp_path (never a .env in cwd)."""
    env_file = tmp_path / "test.env"
    tmp_path.mkdir(parents=True, exist_ok=True)
    env_file.write_text("")
    environ = {
        "ENV_FILE": str(env_file),
        "OUTPUT_DIR": str(tmp_path / "output"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    environ.update({key.upper(): value for key, value in values.items()})
    settings = load_settings(environ).settings
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    return settings


def snapshot(*folders: Path) -> dict[str, tuple[str, str]]:
    """Every entry under the folders: kind and content hash (links by target)."""
    state: dict[str, tuple[str, str]] = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = Path(root) / name
                if path.is_symlink():
                    state[str(path)] = ("link", os.readlink(path))
                elif path.is_file():
                    state[str(path)] = ("file", sha256_of(path))
                else:
                    state[str(path)] = ("dir", "")
    return state


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CountingValidator:
    """The real validator, recording which files it actually read and at which depth."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, path: Path, **options: Any) -> Verdict:
        self.calls.append((Path(path).name, bool(options.get("deep"))))
        return validate_file(path, **options)


def resolve_checkpoint(
    settings: Settings, *, apply: bool, validator: Any = None, expect: Any = None, progress: Any = None
) -> CheckpointOutcome:
    """The checkpoint part of `preflight check` (apply=False) or of `preflight run` (apply=True): plan, then
    perform the planned actions, save the verdict cache and check stock mode's landing, as `run` does."""
    import dataclasses

    from entrypoint.actions import perform
    from entrypoint.checkpoints.resolve import failed_after_actions, plan_checkpoint, settle
    from entrypoint.modes import mode_for

    mode = mode_for(settings)
    plan = plan_checkpoint(settings, mode, validator=validator, expect=expect, progress=progress)
    if not apply:
        return settle(plan, None, settings)
    performed = perform(plan.actions, quarantine_dir=settings.quarantine_dir)
    outcome = settle(plan, performed.results, settings)
    if plan.cache is not None:
        warning = plan.cache.save()
        if warning:
            outcome = dataclasses.replace(outcome, problems=(*outcome.problems, warning))
    failed = performed.failed_required
    if failed is not None:
        return failed_after_actions(outcome, f"{failed.action.describe()}: {failed.error}", "")
    landing = mode.verify(settings, outcome.load_path if outcome.kind != "none" else None)
    if landing is not None:
        return failed_after_actions(outcome, landing.message, landing.fix)
    return outcome


def planned_actions(settings: Settings) -> tuple[Any, ...]:
    """The checkpoint actions `preflight check` lists for these settings."""
    from entrypoint.checkpoints.resolve import plan_checkpoint
    from entrypoint.modes import mode_for

    return plan_checkpoint(settings, mode_for(settings)).actions
