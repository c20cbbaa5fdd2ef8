"""The run ledger: OUTPUT_DIR/preflight/runs.json, one record per start of the trainer. Torch-free.

`preflight run` records each start (time, the update it resumes from, where training.log stood) as one of
its planned actions; the trainer records what it learns at its end (exit code, how it ended, the last
update it saved). A start without an end was killed without warning (SIGKILL, out of memory, power loss).
Every write replaces the whole file durably (temp file, fsync, rename), so a crash leaves the old ledger
or the new one, never half of one; an unreadable ledger is read as empty and rewritten.

`crash_loop(records, limit)` is the pure rule of the crash-loop breaker.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

LEDGER_FILE = "runs.json"
KEEP_RECORDS = 50
SCHEMA = 1

# How a run ended, as the trainer records it.
FINISHED = "finished"  # exit 0: all epochs, MAX_UPDATES, or stopped by a signal after its save
CRASHED = "crash"
STALLED = "stall"
NON_FINITE = "non-finite"
NOT_SAVED = "last-not-saved"
KILLED = "killed"  # no end was recorded: SIGKILL, out of memory, power loss
# The preflight stopped before any trainer ran (the machines did not meet): not a crash of the trainer.
NOT_STARTED = "not-started"


@dataclass(frozen=True)
class RunRecord:
    started: float  # seconds since the epoch
    pid: int
    resumed_from: int  # the update the start resumed from (0: pretrained weights or scratch)
    log_offset: int  # size of training.log when the start was planned: its lines follow
    ended: float | None = None
    exit_code: int | None = None
    outcome: str = ""  # one of the outcomes above; "" while running or when killed
    detail: str = ""  # e.g. the exception of a crash
    last_saved_update: int | None = None  # the newest model_last.pt this run saved, if any

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    def describe_end(self) -> str:
        if self.ended is None:
            return "ended without a record (killed: SIGKILL, out of memory or power loss)"
        text = f"exit {self.exit_code} ({self.outcome or 'unknown'}"
        text += f": {self.detail})" if self.detail else ")"
        return text


def ledger_path(report_dir: Path) -> Path:
    return report_dir / LEDGER_FILE


def read_ledger(path: Path) -> list[RunRecord]:
    """The records, oldest first; [] when the file is missing or unreadable (it is rewritten then)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        return []
    names = {item.name for item in fields(RunRecord)}
    records = []
    for raw in data["runs"]:
        if not isinstance(raw, dict):
            continue
        with contextlib.suppress(TypeError, ValueError):
            records.append(RunRecord(**{key: value for key, value in raw.items() if key in names}))
    return records


def _write(path: Path, records: Sequence[RunRecord]) -> None:
    from entrypoint.durable import replace_text

    path.parent.mkdir(parents=True, exist_ok=True)
    kept = list(records)[-KEEP_RECORDS:]
    replace_text(path, json.dumps({"schema": SCHEMA, "runs": [asdict(r) for r in kept]}, indent=1) + "\n")


def record_start(path: Path, resumed_from: int, log_offset: int, pid: int | None = None) -> RunRecord:
    record = RunRecord(
        started=time.time(),
        pid=os.getpid() if pid is None else pid,
        resumed_from=resumed_from,
        log_offset=log_offset,
    )
    _write(path, [*read_ledger(path), record])
    return record


def record_end(
    path: Path,
    *,
    exit_code: int,
    outcome: str,
    detail: str = "",
    last_saved_update: int | None = None,
    pid: int | None = None,
) -> bool:
    """Complete the newest open record of this process; False when there is none (started without `run`)."""
    pid = os.getpid() if pid is None else pid
    records = read_ledger(path)
    for index in range(len(records) - 1, -1, -1):
        record = records[index]
        if record.pid == pid and record.ended is None:
            records[index] = replace(
                record,
                ended=time.time(),
                exit_code=exit_code,
                outcome=outcome,
                detail=detail[:300],
                last_saved_update=last_saved_update,
            )
            _write(path, records)
            return True
    return False


@dataclass(frozen=True)
class CrashLoop:
    update: int
    runs: tuple[RunRecord, ...]  # the failed starts, oldest first

    def message(self) -> str:
        ends = "; ".join(run.describe_end() for run in self.runs)
        return (
            f"crash loop: the last {len(self.runs)} starts each resumed from update {self.update} and "
            f"ended without a new save: {ends}"
        )


def crash_loop(records: Sequence[RunRecord], limit: int) -> CrashLoop | None:
    """The last `limit` starts each failed, resumed from the same update and saved nothing newer.

    A clean end (exit 0) or any saved progress breaks the chain, so a run that moves forward between its
    crashes is never stopped. Starts whose trainer never ran (NOT_STARTED: another machine was late or
    different) neither count nor break it. limit 0: never.
    """
    started = [record for record in records if record.outcome != NOT_STARTED]
    if limit <= 0 or len(started) < limit:
        return None
    last = started[-limit:]
    update = last[0].resumed_from
    for run in last:
        if not run.failed or run.resumed_from != update:
            return None
        if run.last_saved_update is not None and run.last_saved_update > update:
            return None
    return CrashLoop(update, tuple(last))


def log_tail(log_file: Path, offset: int, lines: int = 12, max_bytes: int = 256 * 1024) -> list[str]:
    """The last `lines` lines of `log_file` written after `offset` (progress-bar redraws reduced to their
    last state)."""
    try:
        with open(log_file, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(offset, size - max_bytes, 0)
            handle.seek(start)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in shown if line.strip()][-lines:]


def to_json(record: RunRecord) -> dict[str, Any]:
    return asdict(record)
