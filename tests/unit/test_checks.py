"""System checks: shared memory, disk, writable folders, limits and init, dataset, bounded waits."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.checks.dataset import check_dataset
from entrypoint.checks.disk import check_disk, saves_needed
from entrypoint.checks.limits import check_init, check_ulimits
from entrypoint.checks.logger import check_logger
from entrypoint.checks.result import FAIL, OK, WARN, worst
from entrypoint.checks.shm import check_shm
from entrypoint.checks.writable import check_writable, probe_folder
from entrypoint.probes.storage import LimitFacts, ShmFacts, SpaceFacts, probe_shm, probe_space
from entrypoint.wait import wait_for_path, wait_until_stable
from tests.mounts import tmpfs

MB = 1024 * 1024
GB = 10**9


def test_worst() -> None:
    assert worst([OK, WARN, OK]) == WARN and worst([WARN, FAIL]) == FAIL and worst([]) == OK


def test_shm_docker_default_warns_with_compose_fix() -> None:
    result = check_shm(ShmFacts("/dev/shm", True, 64 * MB, 64 * MB), workers_total=4, per_worker_mb=256)
    assert result.status == WARN
    assert "Docker default" in result.message and "bus error" in result.message
    assert "shm_size" in result.fix and "ipc: host" in result.fix


def test_shm_large_enough_is_ok_and_missing_fails() -> None:
    assert (
        check_shm(ShmFacts("/dev/shm", True, 8 * GB, 8 * GB), workers_total=4, per_worker_mb=256).status == OK
    )
    assert check_shm(ShmFacts("/x", False, 0, 0), workers_total=1, per_worker_mb=256).status == FAIL


def test_shm_real_probe() -> None:
    facts = probe_shm()
    assert facts.exists and facts.total_bytes > 0


def space(free: int, device: int = 1) -> SpaceFacts:
    return SpaceFacts("/out", "/out", device, free, 10 * free)


def test_disk_fails_when_one_more_save_cannot_fit() -> None:
    results = check_disk(
        space(4 * GB), None, checkpoint_bytes=5 * GB, estimate_source="largest checkpoint present"
    )
    assert [r.status for r in results] == [FAIL]
    assert "not even one more save fits" in results[0].message


def test_disk_warns_when_few_saves_fit_and_backups_on_same_fs_are_free() -> None:
    results = check_disk(space(11 * GB), space(11 * GB), checkpoint_bytes=5 * GB, estimate_source="x")
    assert results[0].status == WARN and "only 2 more save(s)" in results[0].message
    assert results[1].status == OK and "hard links where the mounts allow" in results[1].message


def test_disk_need_counts_kept_checkpoints_temps_and_backup_copies() -> None:
    assert saves_needed(3, 3, backups_share_disk=False) == 6
    assert saves_needed(3, 3, backups_share_disk=True) == 9
    assert saves_needed(-1, 0, backups_share_disk=False) == 3
    results = check_disk(space(40 * GB), None, checkpoint_bytes=5 * GB, estimate_source="x", saves_wanted=9)
    assert results[0].status == WARN and "room for 9 at its peak" in results[0].message


def test_disk_backup_on_other_disk_is_checked() -> None:
    results = check_disk(
        space(100 * GB), space(1 * GB, device=2), checkpoint_bytes=5 * GB, estimate_source="x"
    )
    assert [r.status for r in results] == [OK, FAIL]


def test_disk_real_probe(tmp_path: Path) -> None:
    facts = probe_space(tmp_path / "not" / "yet")
    assert facts.existing == str(tmp_path) and facts.free_bytes > 0


def test_writable_real_folder_and_missing_folder(tmp_path: Path) -> None:
    assert check_writable("output", "OUTPUT_DIR", probe_folder(tmp_path)).status == OK
    missing = tmp_path / "a" / "b"
    result = check_writable("output", "OUTPUT_DIR", probe_folder(missing))
    assert result.status == OK and "creates it" in result.message and not missing.exists()
    assert list(tmp_path.iterdir()) == []  # the write test left nothing behind


def test_writable_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert check_writable("log", "LOG_DIR", probe_folder(tmp_path / "f")).status == FAIL


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount_point:
        yield mount_point


def test_writable_read_only_mount_fails_with_reason(read_only_mount: Path) -> None:
    result = check_writable("output", "OUTPUT_DIR", probe_folder(read_only_mount))
    assert result.status == FAIL and "read-only file system" in result.message
    assert "OUTPUT_DIR" in result.fix


def _as_nobody(folder: Path) -> subprocess.CompletedProcess[str]:
    code = (
        # Import first: the interpreter's own files may not be readable by the other user.
        "import os; from pathlib import Path; from entrypoint.checks.writable import check_writable, probe_folder;"
        "os.setgid(65534); os.setuid(65534);"
        f"r = check_writable('output', 'OUTPUT_DIR', probe_folder(Path({str(folder)!r})));"
        "print(r.status, r.message)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )


@pytest.fixture
def world_readable_dir():
    if os.getuid() != 0:
        pytest.skip("needs root to run the check as another user")
    top = Path(tempfile.mkdtemp(prefix="preflight-perm-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


def test_writable_as_other_user_is_tried_for_real(world_readable_dir: Path) -> None:
    folder = world_readable_dir / "owned-by-root"
    folder.mkdir(mode=0o755)
    done = _as_nobody(folder)
    assert done.stdout.startswith("fail") and "permission denied for uid 65534" in done.stdout, done.stderr


def test_unreachable_folder_fails_without_crashing(world_readable_dir: Path) -> None:
    hidden = world_readable_dir / "private"
    hidden.mkdir(mode=0o700)
    done = _as_nobody(hidden / "output")
    assert done.stdout.startswith("fail") and "cannot be reached" in done.stdout, done.stderr


def limits(
    pid: int = 42, init: str | None = "docker-init", memlock: int = resource.RLIM_INFINITY
) -> LimitFacts:
    return LimitFacts(memlock, 64 * MB, pid, init)


def test_pid1_without_init_warns() -> None:
    result = check_init(limits(pid=1, init=None))
    assert result.status == WARN and "init: true" in result.fix


def test_init_present_is_ok() -> None:
    assert "docker-init" in check_init(limits()).message


def test_memlock_limited_with_gpu_warns() -> None:
    assert check_ulimits(limits(memlock=64 * 1024), gpus=1).status == WARN
    assert check_ulimits(limits(memlock=64 * 1024), gpus=0).status == OK
    assert "memlock unlimited" in check_ulimits(limits(), gpus=1).message


def test_dataset_check(tmp_path: Path) -> None:
    result, size = check_dataset(tmp_path / "none", tmp_path / "vocab.txt")
    assert result.status == FAIL and size is None and "prepare_csv_wavs" in result.fix
    (tmp_path / "raw.arrow").write_bytes(b"x" * 10)
    result, _ = check_dataset(tmp_path, tmp_path / "vocab.txt")
    assert result.status == FAIL and "duration.json" in result.message
    (tmp_path / "duration.json").write_text("{}")
    result, _ = check_dataset(tmp_path, tmp_path / "vocab.txt")
    assert result.status == FAIL and "VOCAB_FILE" in result.fix
    (tmp_path / "vocab.txt").write_text(" \na\nb\na\n")
    result, size = check_dataset(tmp_path, tmp_path / "vocab.txt")
    assert result.status == OK and size == 3


def test_dataset_folder_that_is_a_file_or_empty_files(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result, _ = check_dataset(tmp_path / "file", tmp_path / "vocab.txt")
    assert result.status == FAIL and "is a file, not a folder" in result.message
    (tmp_path / "raw.arrow").write_bytes(b"")
    (tmp_path / "duration.json").write_text("{}")
    result, _ = check_dataset(tmp_path, tmp_path / "vocab.txt")
    assert result.status == FAIL and "raw.arrow is empty" in result.message


def test_wandb_without_key_warns() -> None:
    result = check_logger("wandb", {}, {})
    assert result.status == WARN and "WANDB_API_KEY" in result.message and "LOGGER=tensorboard" in result.fix
    assert check_logger("wandb", {}, {"WANDB_API_KEY": "k" * 40}).status == OK
    assert check_logger("tensorboard", {}, {}).status == OK


def test_wait_for_path(tmp_path: Path) -> None:
    assert wait_for_path(tmp_path, 0) is True
    assert wait_for_path(tmp_path / "never", 0) is False
    assert wait_for_path(tmp_path / "never", 0.6) is False


def test_wait_for_a_growing_file_gives_up_at_the_bound(tmp_path: Path) -> None:
    growing = tmp_path / "pretrained.pt"
    growing.write_bytes(b"x")
    stop = threading.Event()

    def keep_writing() -> None:
        with open(growing, "ab") as handle:
            while not stop.is_set():
                handle.write(b"y" * 4096)
                handle.flush()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        assert wait_until_stable(growing, 1.5) is False
    finally:
        stop.set()
        writer.join()
    assert wait_until_stable(growing, 3.0) is True
