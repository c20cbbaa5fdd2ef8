"""`make host-check` parsers on recorded command outputs (tests/fixtures/host-check), and its disk checks on
this machine's real file systems. No GPU, driver or Docker daemon is needed: the outputs stand in for them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from entrypoint import host_check
from entrypoint.host_check import (
    check_disk,
    check_separate_disks,
    disk_checks,
    host_checks,
    parse_compose_version,
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
    assert check.message.startswith("driver 570.133.20, 2 GPU(s): 0: NVIDIA GeForce RTX 4090 24564 MiB")


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


def test_run_command_reports_a_missing_program_as_127() -> None:
    assert run_command(["no-such-program-f5tts"])[0] == 127
    rc, output = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert rc == 3 and "out" in output and "err" in output


def test_disk_checks_against_real_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("output", "backups", "dataset", "logs"):
        (tmp_path / name).mkdir()
    env = tmp_path / ".env"
    env.write_text(
        f"OUTPUT_DIR={tmp_path / 'output'}\nBACKUP_DIR={tmp_path / 'backups'}\nDATASET_DIR={tmp_path / 'dataset'}\n"
        f"LOG_DIR={tmp_path / 'logs'}\nCHECKPOINT_SIZE_GB=0.001\nKEEP_CHECKPOINTS=3\n"
    )
    for name in (
        "OUTPUT_DIR",
        "BACKUP_DIR",
        "DATASET_DIR",
        "LOG_DIR",
        "CHECKPOINT_SIZE_GB",
        "KEEP_CHECKPOINTS",
    ):
        monkeypatch.delenv(name, raising=False)
    checks = {check.name: check for check in disk_checks(str(env))}
    assert checks["free disk (OUTPUT_DIR)"].status == "ok"
    assert checks["free disk (OUTPUT_DIR)"].message.endswith("(needs 0.0 GB)")
    # Both folders are in tmp_path: one file system, which the check must call out.
    assert checks["backup disk"].status == "warn"
    assert "folders" not in checks

    (tmp_path / "logs").rmdir()
    checks = {check.name: check for check in disk_checks(str(env))}
    assert checks["folders"].status == "fail" and f"mkdir -p {tmp_path / 'logs'}" in checks["folders"].fix


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
    env.write_text(
        f"OUTPUT_DIR={tmp_path}\nBACKUP_DIR={tmp_path}\nDATASET_DIR={tmp_path}\nLOG_DIR={tmp_path}\n"
    )
    assert host_check.main(["--env-file", str(env)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[fail] NVIDIA driver: nvidia-smi not found -- ")
    assert lines[-1].startswith("host check: 5 failed")
