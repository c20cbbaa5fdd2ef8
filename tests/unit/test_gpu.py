"""GPU probe and check. No GPU exists on these machines, so nvidia-smi is replaced by recorded outputs
(tests/fixtures/nvidia-smi/*.xml, in the format of `nvidia-smi -q -x`) and a runner that returns them:
this is the one place where the project mocks, because the real thing cannot exist here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from entrypoint.checks.gpu import check_gpu
from entrypoint.checks.result import FAIL, OK, WARN
from entrypoint.probes.gpu import probe_gpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


def recorded(name: str, code: int = 0):
    def run(argv: list[str]) -> tuple[int, str, str]:
        assert argv[1:] == ["-q", "-x"]
        return code, (FIXTURES / name).read_text(), ""

    return run


def fake_which(name: str) -> str:
    return "/usr/bin/" + name


def test_two_gpus_parsed(tmp_path: Path) -> None:
    facts = probe_gpu({}, tmp_path, fake_which, recorded("two-gpus.xml"))
    assert facts.count == 2
    assert facts.driver_version == "570.133.20" and facts.cuda_version == "12.8"
    assert facts.devices[1].name == "NVIDIA RTX A6000" and facts.devices[1].memory_mib == 49140
    result = check_gpu(facts, require=True)
    assert result.status == OK
    assert (
        "2 GPU(s)" in result.message
        and "RTX 4090" in result.message
        and "driver 570.133.20" in result.message
    )


def test_cuda_visible_devices_restricts(tmp_path: Path) -> None:
    facts = probe_gpu({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path, fake_which, recorded("two-gpus.xml"))
    assert [device.name for device in facts.devices] == ["NVIDIA RTX A6000"]
    facts = probe_gpu({"CUDA_VISIBLE_DEVICES": ""}, tmp_path, fake_which, recorded("two-gpus.xml"))
    assert facts.count == 0


def test_old_driver_fails_before_cuda_does(tmp_path: Path) -> None:
    facts = probe_gpu({}, tmp_path, fake_which, recorded("old-driver.xml"))
    result = check_gpu(facts, require=False)
    assert result.status == FAIL
    assert "CUDA 12.2" in result.message and "12.8" in result.message
    assert "driver" in result.fix


def test_missing_tool_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    facts = probe_gpu({}, tmp_path, lambda name: None)
    assert facts.count == 0 and facts.error == "nvidia-smi not found"
    assert check_gpu(facts, require=False).status == WARN


def test_require_gpu_without_gpu_fails_and_names_the_toolkit(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").touch()
    facts = probe_gpu({}, tmp_path, lambda name: None)
    result = check_gpu(facts, require=True)
    assert result.status == FAIL
    assert "REQUIRE_GPU=true" in result.message and "/dev/nvidia0" in result.message
    assert "NVIDIA Container Toolkit" in result.fix and "compose.yaml" in result.fix


def test_failing_and_hanging_nvidia_smi(tmp_path: Path) -> None:
    def failing(argv: list[str]) -> tuple[int, str, str]:
        return 9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"

    def hanging(argv: list[str]) -> tuple[int, str, str]:
        raise subprocess.TimeoutExpired(argv, 15)

    def garbage(argv: list[str]) -> tuple[int, str, str]:
        return 0, "not xml", ""

    assert "couldn't communicate" in (probe_gpu({}, tmp_path, fake_which, failing).error or "")
    assert "did not answer" in (probe_gpu({}, tmp_path, fake_which, hanging).error or "")
    assert "not its XML" in (probe_gpu({}, tmp_path, fake_which, garbage).error or "")


def test_real_probe_on_this_machine_does_not_crash() -> None:
    facts = probe_gpu()
    assert facts.count >= 0
    assert check_gpu(facts, require=False).status in (OK, WARN, FAIL)


def test_hanging_nvidia_smi_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entrypoint.probes.gpu as gpu

    pid_file = tmp_path / "child.pid"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gpu, "NVIDIA_SMI_TIMEOUT_S", 1.0)
    facts = probe_gpu({}, tmp_path, lambda name: str(fake))
    assert "did not answer" in (facts.error or "")
    assert not _is_running(int(pid_file.read_text()))


def _is_running(pid: int) -> bool:
    """Alive and not a zombie (a killed child of an exited parent may linger as one until reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
