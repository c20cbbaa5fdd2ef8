"""`make host-check` parsers on recorded command outputs (tests/fixtures/host-check), and its disk checks on
this machine's real file systems. No GPU, driver or Docker daemon is needed: the outputs stand in for them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from tools import host_check
from tools.host_check import (
    check_disk,
    check_separate_disks,
    disk_checks,
    disk_needs,
    host_checks,
    parse_compose_version,
    parse_compute_capability,
    parse_ctk_version,
    parse_docker_gpu_run,
    parse_docker_runtimes,
    parse_nvidia_smi,
    run_command,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "host-check"


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_driver_ok_lists_the_gpus() -> None:
    check = parse_nvidia_smi(0, recorded("nvidia-smi-two-gpus.txt"))
    assert check.status == "ok"
    assert check.message.startswith(
        "driver 570.133.20, 2 GPU(s): 0: NVIDIA GeForce RTX 4090 24564 MiB, compute 8.9; 1: "
    )


def test_compute_capability_of_supported_gpus() -> None:
    check = parse_compute_capability(0, recorded("nvidia-smi-two-gpus.txt"), "bf16")
    assert check is not None and check.line() == (
        "[  ok] GPU compute capability: GPU 0 NVIDIA GeForce RTX 4090 8.9, GPU 1 NVIDIA GeForce RTX 4090 8.9"
    )


def test_a_pascal_card_fails_naming_it() -> None:
    check = parse_compute_capability(0, recorded("nvidia-smi-pascal-and-turing.txt"), "fp16")
    assert check is not None and check.status == "fail"
    assert check.message.startswith(
        "GPU 0 Tesla P40 (compute capability 6.1): torch 2.9.1 has no kernels for it"
    )
    assert "Tesla T4" not in check.message and "7.0 or newer" in check.fix


@pytest.mark.parametrize(("precision", "status"), [("bf16", "warn"), ("fp16", "ok"), ("no", "ok")])
def test_bf16_before_ampere_warns(precision: str, status: str) -> None:
    check = parse_compute_capability(0, recorded("nvidia-smi-turing.txt"), precision)
    assert check is not None and check.status == status
    if status == "warn":
        assert "Tesla T4 (compute capability 7.5)" in check.message
        assert check.fix == "set MIXED_PRECISION=fp16 in .env"


def test_no_capability_line_without_gpus_and_a_warning_when_unreported() -> None:
    assert parse_compute_capability(6, recorded("nvidia-smi-no-devices.txt"), "bf16") is None
    assert parse_compute_capability(127, "", "bf16") is None
    unreported = parse_compute_capability(0, "0, Tesla T4, 570.133.20, 15360 MiB, [N/A]\n", "bf16")
    assert unreported is not None and unreported.status == "warn"
    assert "does not report it for GPU 0 Tesla T4" in unreported.message


def test_an_nvidia_smi_without_compute_cap_is_an_old_driver() -> None:
    check = parse_nvidia_smi(2, recorded("nvidia-smi-no-compute-cap-field.txt"))
    assert check.status == "fail" and "older than 570" in check.message and "570 or newer" in check.fix


def test_an_old_driver_fails_with_the_minimum() -> None:
    check = parse_nvidia_smi(0, recorded("nvidia-smi-old-driver.txt"))
    assert check.status == "fail"
    assert "535.183.01 is older than 570.26" in check.message and "driver 570 or newer" in check.fix


def test_a_driver_that_does_not_answer_names_the_reboot_fix() -> None:
    check = parse_nvidia_smi(9, recorded("nvidia-smi-no-driver.txt"))
    assert check.status == "fail"
    assert check.message.startswith("NVIDIA-SMI has failed because it couldn't communicate")
    assert "stop and start the VM from Proxmox" in check.fix


def test_a_driver_without_a_gpu_points_at_the_passthrough() -> None:
    check = parse_nvidia_smi(6, recorded("nvidia-smi-no-devices.txt"))
    assert check.status == "fail" and check.message == "the driver is loaded but sees no GPU"
    assert "hostpci" in check.fix


def test_a_missing_program_is_named() -> None:
    assert parse_nvidia_smi(127, "").message == "nvidia-smi not found"
    assert parse_ctk_version(127, "").message == "nvidia-ctk not found"
    assert parse_docker_runtimes(127, "").message == "docker not found"


def test_toolkit_versions() -> None:
    assert parse_ctk_version(0, recorded("nvidia-ctk-1.17.8.txt")).line() == (
        "[  ok] NVIDIA Container Toolkit: version 1.17.8"
    )
    old = parse_ctk_version(0, recorded("nvidia-ctk-1.14.6.txt"))
    assert old.status == "warn" and "1.14.6 is older than 1.17.8" in old.message


def test_docker_runtimes() -> None:
    assert parse_docker_runtimes(0, recorded("docker-info-runtimes-nvidia.txt")).status == "ok"
    plain = parse_docker_runtimes(0, recorded("docker-info-runtimes-plain.txt"))
    assert plain.status == "fail" and "nvidia-ctk runtime configure --runtime=docker" in plain.fix
    denied = parse_docker_runtimes(1, recorded("docker-info-permission-denied.txt"))
    assert denied.message == "no permission to use Docker" and "usermod -aG docker" in denied.fix


def test_docker_gpu_run() -> None:
    ok = parse_docker_gpu_run(0, recorded("docker-run-gpu-ok.txt"))
    assert ok.status == "ok" and ok.message == (
        "containers see 1 GPU(s): GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-5f2c7a1e-9b3d-4c8e-a1f0-6d2b9e7c3a41)"
    )
    no_toolkit = parse_docker_gpu_run(125, recorded("docker-run-no-toolkit.txt"))
    assert no_toolkit.status == "fail"
    assert no_toolkit.message == 'could not select device driver "" with capabilities: [[gpu]]'
    assert "systemctl restart docker" in no_toolkit.fix
    old = parse_docker_gpu_run(125, recorded("docker-run-old-driver.txt"))
    assert old.message == "the driver is too old for the image's CUDA" and "570" in old.fix


def test_compose_versions() -> None:
    assert parse_compose_version(0, recorded("compose-version-2.29.7.txt")).message == "version 2.29.7"
    old = parse_compose_version(0, recorded("compose-version-2.20.2.txt"))
    assert old.status == "fail" and "older than 2.24.4" in old.message
    missing = parse_compose_version(1, recorded("compose-missing.txt"))
    assert missing.message == "the Compose plugin is missing" and "docker-compose-plugin" in missing.fix


def test_the_commands_run_are_the_documented_ones() -> None:
    seen: list[list[str]] = []

    def fake_run(argv: Sequence[str]) -> tuple[int, str]:
        seen.append(list(argv))
        return 127, ""

    checks = host_checks(fake_run, "img:1")
    assert [check.status for check in checks] == ["fail"] * 5
    assert ["docker", "run", "--rm", "--gpus", "all", "img:1", "nvidia-smi", "-L"] in seen
    assert ["nvidia-ctk", "--version"] in seen
    query = "--query-gpu=index,name,driver_version,memory.total,compute_cap"
    assert ["nvidia-smi", query, "--format=csv,noheader"] in seen


def test_the_capability_line_follows_the_driver_line_and_the_setting() -> None:
    def fake_run(argv: Sequence[str]) -> tuple[int, str]:
        return (0, recorded("nvidia-smi-turing.txt")) if argv[0] == "nvidia-smi" else (127, "")

    checks = host_checks(fake_run, "img:1", mixed_precision="bf16")
    assert [check.name for check in checks[:2]] == ["NVIDIA driver", "GPU compute capability"]
    assert checks[1].status == "warn"
    assert host_checks(fake_run, "img:1", mixed_precision="fp16")[1].status == "ok"


def test_run_command_reports_a_missing_program_as_127() -> None:
    assert run_command(["no-such-program-f5tts"])[0] == 127
    rc, output = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert rc == 3 and "out" in output and "err" in output


def test_disk_needs_count_both_temps() -> None:
    # KEEP_CHECKPOINTS numbered + a numbered temp + model_last.pt + its temp; BACKUP_KEEP + one temp.
    assert disk_needs(10, keep_checkpoints=3, backup_keep=2) == (60, 30)
    assert disk_needs(10, keep_checkpoints=-1, backup_keep=1) == (30, 20)


def _env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: Path, backups: Path) -> Path:
    env = tmp_path / ".env"
    env.write_text(
        f"OUTPUT_DIR={output}\nBACKUP_DIR={backups}\nDATASET_DIR={tmp_path / 'dataset'}\n"
        f"LOG_DIR={tmp_path / 'logs'}\nCHECKPOINT_SIZE_GB=1\nKEEP_CHECKPOINTS=3\nBACKUP_KEEP=3\n"
    )
    for name in (
        "OUTPUT_DIR",
        "BACKUP_DIR",
        "DATASET_DIR",
        "LOG_DIR",
        "CHECKPOINT_SIZE_GB",
        "KEEP_CHECKPOINTS",
        "BACKUP_KEEP",
    ):
        monkeypatch.delenv(name, raising=False)
    return env


def test_disk_checks_against_real_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("output", "backups", "dataset", "logs"):
        (tmp_path / name).mkdir()
    env = _env_file(tmp_path, monkeypatch, tmp_path / "output", tmp_path / "backups")
    checks = {check.name: check for check in disk_checks(str(env))}
    # Both folders are in tmp_path: one file system, whose free space must hold (3 + 3) + (3 + 1) GB.
    both = checks["free disk (OUTPUT_DIR + BACKUP_DIR)"]
    assert "10.0 GB" in both.message, both.message
    if both.status == "fail":
        assert "point BACKUP_DIR at another disk" in both.fix
    assert "free disk (OUTPUT_DIR)" not in checks
    assert checks["backup disk"].status == "warn"
    assert "folders" not in checks

    (tmp_path / "logs").rmdir()
    checks = {check.name: check for check in disk_checks(str(env))}
    assert checks["folders"].status == "fail" and f"mkdir -p {tmp_path / 'logs'}" in checks["folders"].fix


def test_disk_checks_on_two_file_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm as a file system apart from the temporary folder")
    for name in ("output", "dataset", "logs"):
        (tmp_path / name).mkdir()
    backups = shm / f"f5tts-host-check-{os.getpid()}"
    backups.mkdir()
    try:
        env = _env_file(tmp_path, monkeypatch, tmp_path / "output", backups)
        checks = {check.name: check for check in disk_checks(str(env))}
    finally:
        backups.rmdir()
    assert "6.0 GB" in checks["free disk (OUTPUT_DIR)"].message
    assert "4.0 GB" in checks["free disk (BACKUP_DIR)"].message
    assert checks["backup disk"].status == "ok"


def test_disk_and_separate_disk_verdicts() -> None:
    assert check_disk("OUTPUT_DIR", Path("/x"), 10 * 10**9, 20 * 10**9).status == "fail"
    assert check_disk("OUTPUT_DIR", Path("/x"), 30 * 10**9, 20 * 10**9).status == "ok"
    assert check_separate_disks(1, 2).status == "ok"
    assert check_separate_disks(os.stat("/").st_dev, os.stat("/").st_dev).status == "warn"


def test_main_prints_one_line_per_check_and_exits_1_on_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(host_check, "run_command", lambda argv: (127, ""))
    env = tmp_path / ".env"
    # A tiny checkpoint size, so the disk lines pass on any machine and only the five commands fail.
    env.write_text(
        f"OUTPUT_DIR={tmp_path}\nBACKUP_DIR={tmp_path}\nDATASET_DIR={tmp_path}\nLOG_DIR={tmp_path}\n"
        "CHECKPOINT_SIZE_GB=0.001\n"
    )
    monkeypatch.delenv("CHECKPOINT_SIZE_GB", raising=False)
    assert host_check.main(["--env-file", str(env)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[fail] NVIDIA driver: nvidia-smi not found -- ")
    assert lines[-1].startswith("host check: 5 failed")
