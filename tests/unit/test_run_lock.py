"""The run lock on real files: whatever a user or another program left under OUTPUT_DIR/.train.lock, its
bytes (and those of what it points to) survive, and the run is told what to move away."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint import run_lock

PRECIOUS = b"PK\x03\x04 a backup checkpoint's bytes" * 1000


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    return folder


def _precious(tmp_path: Path) -> Path:
    target = tmp_path / "backups" / "model_1000.pt"
    target.parent.mkdir()
    target.write_bytes(PRECIOUS)
    return target


def test_a_symlink_is_never_followed_nor_its_target_truncated(tmp_path: Path, output: Path) -> None:
    target = _precious(tmp_path)
    (output / run_lock.LOCK_NAME).symlink_to(target)
    fd, problem = run_lock.acquire(output)
    assert fd is None and problem is not None
    assert "is a symlink" in problem and str(target) in problem and "rm " in problem
    assert target.read_bytes() == PRECIOUS
    assert run_lock.held_by_other(output) == problem  # `check` says the same before any run


def test_a_dangling_symlink_creates_nothing_where_it_points(tmp_path: Path, output: Path) -> None:
    target = tmp_path / "elsewhere" / "created-by-the-lock"
    target.parent.mkdir()
    (output / run_lock.LOCK_NAME).symlink_to(target)
    fd, problem = run_lock.acquire(output)
    assert fd is None and problem is not None and "is a symlink" in problem
    assert not target.exists()


def test_a_hard_link_to_a_checkpoint_is_not_emptied(tmp_path: Path, output: Path) -> None:
    target = _precious(tmp_path)
    os.link(target, output / run_lock.LOCK_NAME)
    fd, problem = run_lock.acquire(output)
    assert fd is None and problem is not None and "2 hard links" in problem
    assert target.read_bytes() == PRECIOUS


def test_a_file_that_is_not_a_lock_line_is_left_untouched(output: Path) -> None:
    lock = output / run_lock.LOCK_NAME
    lock.write_bytes(b"someone's notes, not a lock\n")
    if os.geteuid() == 0:
        os.chown(lock, 12345, 12345)  # another owner's file
    fd, problem = run_lock.acquire(output)
    assert fd is None and problem is not None and "left untouched" in problem
    assert lock.read_bytes() == b"someone's notes, not a lock\n"


def test_a_fifo_blocks_neither_run_nor_check(output: Path) -> None:
    lock = output / run_lock.LOCK_NAME
    os.mkfifo(lock)
    # In a child process with a deadline: an open() that blocks on the FIFO must fail the test, not hang it.
    code = (
        "import sys; from pathlib import Path; from entrypoint import run_lock; "
        "print(run_lock.held_by_other(Path(sys.argv[1]))); print(run_lock.acquire(Path(sys.argv[1]))[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(output)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("is not a regular file") == 2


def test_an_earlier_lock_line_of_ours_is_rewritten(output: Path) -> None:
    lock = output / run_lock.LOCK_NAME
    lock.write_bytes(b"pid 17 on old-host since 2026-01-01T00:00:00Z\n")
    fd, problem = run_lock.acquire(output)
    assert problem is None and fd is not None
    try:
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
        assert os.get_inheritable(fd) and os.get_blocking(fd)  # handed to the trainer as a plain descriptor
        assert "another trainer is using" in (run_lock.held_by_other(output) or "")
    finally:
        os.close(fd)
    assert run_lock.held_by_other(output) is None
