"""The run ledger's crash-safe file and the crash-loop rule (pure, on recorded facts)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from entrypoint.ledger import NOT_STARTED, RunRecord, crash_loop, read_ledger, record_end, record_start


def _run(resumed_from: int, exit_code: int | None, saved: int | None = None) -> RunRecord:
    ended = None if exit_code is None else 2.0
    return RunRecord(1.0, 10, resumed_from, 0, ended, exit_code, "crash" if exit_code else "", "", saved)


def test_three_failed_starts_from_one_update_are_a_loop() -> None:
    loop = crash_loop([_run(0, 0), _run(40, 1), _run(40, 7), _run(40, None)], limit=3)
    assert loop is not None and loop.update == 40
    assert "resumed from update 40" in loop.message() and "killed" in loop.message()


def test_progress_a_clean_end_or_a_short_history_is_not_a_loop() -> None:
    assert crash_loop([_run(40, 1), _run(40, 1), _run(60, 1)], limit=3) is None  # moved on
    assert crash_loop([_run(40, 1), _run(40, 0), _run(40, 1)], limit=3) is None  # finished cleanly once
    assert crash_loop([_run(40, 1), _run(40, 1, saved=44), _run(40, 1)], limit=3) is None  # saved newer
    assert crash_loop([_run(40, 1), _run(40, 1)], limit=3) is None
    assert crash_loop([_run(40, 1)] * 5, limit=0) is None


def test_starts_whose_trainer_never_ran_neither_count_nor_break_a_loop() -> None:
    waited = replace(_run(40, 3), outcome=NOT_STARTED)  # machine 1 waited for a machine 0 that came late
    assert crash_loop([_run(40, 1), waited, waited, waited], limit=3) is None
    loop = crash_loop([_run(40, 1), waited, _run(40, 7), waited, _run(40, None)], limit=3)
    assert loop is not None and [run.exit_code for run in loop.runs] == [1, 7, None]


def test_the_ledger_survives_a_damaged_file_and_records_ends_by_pid(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text('{"schema": 1, "runs": [', encoding="utf-8")  # a torn write of another tool
    assert read_ledger(path) == []
    record_start(path, resumed_from=5, log_offset=100, pid=111)
    record_start(path, resumed_from=5, log_offset=200, pid=222)
    assert record_end(path, exit_code=7, outcome="stall", pid=111)
    assert not record_end(path, exit_code=1, outcome="crash", pid=333)
    first, second = read_ledger(path)
    assert (first.exit_code, first.outcome, second.ended) == (7, "stall", None)
    assert not list(tmp_path.glob("*.tmp*"))  # no temp file left by the durable writes
