"""The dataset fingerprint: what the batches of a run were made from (vocabulary, raw.arrow, duration.json,
batch settings and the resulting batch count). `preflight run` records it when it starts the trainer; when
a later run resumes a training checkpoint, a different fingerprint is a WARN naming what changed, because
F5-TTS resumes by skipping `update % batches` batches of the new order, not the ones it trained on.

Kept in OUTPUT_DIR/preflight/dataset-fingerprint.json, one entry per started run with the update it
started from; the entry that applies to a checkpoint at update U is the newest one started at or before U.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from entrypoint.checks.result import OK, WARN, CheckResult
from entrypoint.durable import replace_text

NAME = "fingerprint"
FILE_NAME = "dataset-fingerprint.json"
BATCH_KEYS = ("batch_size", "batch_size_type", "max_samples", "grad_accumulation_steps", "seed")
KEEP_ENTRIES = 50


def _digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def dataset_fingerprint(
    settings: Any, vocab_path: Path, processes: int, batches_per_process: int | None
) -> dict[str, Any]:
    return {
        "vocab": _digest(vocab_path),
        "raw.arrow": _digest(settings.dataset_dir / "raw.arrow"),
        "duration.json": _digest(settings.dataset_dir / "duration.json"),
        **{key.upper(): getattr(settings, key) for key in BATCH_KEYS},
        "processes": processes,
        "batches_per_process": batches_per_process,
    }


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return (
        [e for e in entries if isinstance(e, dict) and isinstance(e.get("fingerprint"), dict)]
        if isinstance(entries, list)
        else []
    )


def _applies_to(entries: list[dict[str, Any]], update: int) -> dict[str, Any] | None:
    started = [e for e in entries if isinstance(e.get("start_update"), int) and e["start_update"] <= update]
    return started[-1]["fingerprint"] if started else None


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs, in words: files by name, settings with their old and new values."""
    changed = []
    for key, value in now.items():
        old = before.get(key)
        if old == value:
            continue
        if key in ("vocab", "raw.arrow", "duration.json"):
            changed.append(f"{key} changed")
        elif key == "batches_per_process":
            changed.append(f"batches per epoch per process {old} -> {value}")
        else:
            changed.append(f"{key} {old} -> {value}")
    return changed


def check_fingerprint(
    report_dir: Path, fingerprint: dict[str, Any], *, checkpoint_kind: str, update: int | None
) -> CheckResult | None:
    """A result when resuming a training checkpoint whose run recorded a fingerprint; None otherwise."""
    if checkpoint_kind != "training" or update is None:
        return None
    before = _applies_to(_read(report_dir / FILE_NAME), update)
    if before is None:
        return None
    changed = changes(before, fingerprint)
    if not changed:
        return CheckResult(NAME, OK, f"dataset and batch plan as when update {update} was trained")
    return CheckResult(
        NAME,
        WARN,
        f"since the run that reached update {update}: {'; '.join(changed)}: the resume skips batches of the "
        f"new order, not the ones already trained on",
        "expected after a deliberate change; otherwise restore the dataset and batch settings of that run",
    )


def record_fingerprint(report_dir: Path, fingerprint: dict[str, Any], start_update: int) -> str | None:
    """Append this run's entry (durably); the reason when that was not possible."""
    path = report_dir / FILE_NAME
    entries = [
        e for e in _read(path) if isinstance(e.get("start_update"), int) and e["start_update"] < start_update
    ]
    entries.append({"start_update": start_update, "fingerprint": fingerprint})
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        replace_text(path, json.dumps(entries[-KEEP_ENTRIES:], indent=1) + "\n")
    except OSError as error:
        return f"dataset fingerprint not recorded in {path}: {error.strerror or error}"
    return None
