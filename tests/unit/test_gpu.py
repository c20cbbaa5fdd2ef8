"""GPU probe and check. No GPU exists on these machines, so nvidia-smi is replaced by recorded outputs
(tests/fixtures/nvidia-smi: `nvidia-smi -q -x` as *.xml, `--query-gpu=index,compute_cap` as
*-compute-cap.csv) and a runner that returns them: this is the one place where the project mocks, because
the real thing cannot exist here."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest

from entrypoint.checks.gpu import check_gpu
from entrypoint.checks.result import FAIL, OK, WARN
from entrypoint.probes.gpu import COMPUTE_CAP_QUERY, parse_compute_caps, probe_gpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


class Recorded:
    """A runner answering `-q -x` with fixture `name` and the compute-capability query with fixture `caps`
    (by default the one named after `name`; an absent file answers as an nvidia-smi without the field).
    `calls` holds the arguments of every call."""

    def __init__(self, name: str, code: int = 0, caps: str | None = None) -> None:
        self.name, self.code = name, code
        self.caps = caps or name.removesuffix(".xml") + "-compute-cap.csv"
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv[1:])
        if argv[1:] == ["-q", "-x"]:
            return self.code, (FIXTURES / self.name).read_text(), ""
        assert argv[1:] == COMPUTE_CAP_QUERY
        if not (FIXTURES / self.caps).is_file():
            return 2, (FIXTURES / "compute-cap-unknown-field.txt").read_text(), ""
        return 0, (FIXTURES / self.caps).read_text(), ""


def fake_which(name: str) -> str:
    return "/usr/bin/" + name


def test_two_gpus_parsed(tmp_path: Path) -> None:
    facts = probe_gpu({}, tmp_path, fake_which, Recorded("two-gpus.xml"))
    assert facts.count == 2
    assert facts.driver_version == "570.133.20" and facts.cuda_version == "12.8"
    assert facts.devices[1].name == "NVIDIA RTX A6000" and facts.devices[1].memory_mib == 49140
    assert [device.compute_capability for device in facts.devices] == ["8.9", "8.6"]
    result = check_gpu(facts, require=True, mixed_precision="bf16")
    assert result.status == OK
    assert (
        "2 GPU(s)" in result.message
        and "RTX 4090 24 GiB, compute 8.9" in result.message
        and "driver 570.133.20" in result.message
    )


def test_cuda_visible_devices_restricts(tmp_path: Path) -> None:
    facts = probe_gpu({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path, fake_which, Recorded("two-gpus.xml"))
    assert [device.name for device in facts.devices] == ["NVIDIA RTX A6000"]
    facts = probe_gpu({"CUDA_VISIBLE_DEVICES": ""}, tmp_path, fake_which, Recorded("two-gpus.xml"))
    assert facts.count == 0


def test_old_driver_fails_before_cuda_does(tmp_path: Path) -> None:
    facts = probe_gpu({}, tmp_path, fake_which, Recorded("old-driver.xml"))
    result = check_gpu(facts, require=False)
    assert result.status == FAIL
    assert "CUDA 12.2" in result.message and "12.8" in result.message
    assert "driver" in result.fix


def test_a_pascal_card_fails_naming_it(tmp_path: Path) -> None:
    facts = probe_gpu({}, tmp_path, fake_which, Recorded("pascal-and-turing.xml"))
    assert [device.compute_capability for device in facts.devices] == ["6.1", "7.5"]
    result = check_gpu(facts, require=True)
    assert result.status == FAIL
    assert "GPU 0 Tesla P40 (compute capability 6.1): torch 2.9.1 has no kernels for it" in result.message
    assert "Tesla T4 (compute" not in result.message  # 7.5 has kernels; only the P40 is named
    assert "7.0 or newer" in result.fix and "GPU_DEVICE_IDS" in result.fix


def test_leaving_the_pascal_card_out_leaves_the_turing_one(tmp_path: Path) -> None:
    facts = probe_gpu({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path, fake_which, Recorded("pascal-and-turing.xml"))
    assert [(device.name, device.compute_capability) for device in facts.devices] == [("Tesla T4", "7.5")]
    assert check_gpu(facts, require=True).status == OK


@pytest.mark.parametrize(("precision", "status"), [("bf16", WARN), ("fp16", OK), ("no", OK)])
def test_bf16_before_ampere_warns_and_names_fp16(tmp_path: Path, precision: str, status: str) -> None:
    facts = probe_gpu({}, tmp_path, fake_which, Recorded("turing-t4.xml"))
    result = check_gpu(facts, require=True, mixed_precision=precision)
    assert result.status == status
    if status == WARN:
        assert "GPU 0 Tesla T4 (compute capability 7.5)" in result.message and "emulated" in result.message
        assert result.fix == "set MIXED_PRECISION=fp16 in .env"


def test_the_old_driver_outranks_the_capability(tmp_path: Path) -> None:
    facts = probe_gpu(
        {}, tmp_path, fake_which, Recorded("old-driver.xml", caps="pascal-and-turing-compute-cap.csv")
    )
    result = check_gpu(facts, require=True)
    assert result.status == FAIL and "torch needs CUDA 12.8" in result.message


def test_an_unanswered_capability_query_leaves_it_unknown(tmp_path: Path) -> None:
    def hanging_second_call(argv: list[str]) -> tuple[int, str, str]:
        if argv[1:] == COMPUTE_CAP_QUERY:
            raise subprocess.TimeoutExpired(argv, 15)
        return 0, (FIXTURES / "pascal-and-turing.xml").read_text(), ""

    for run in (Recorded("two-gpus.xml", caps="absent.csv"), hanging_second_call):
        facts = probe_gpu({}, tmp_path, fake_which, run)
        assert facts.error is None and facts.count == 2
        assert [device.compute_capability for device in facts.devices] == [None, None]
        result = check_gpu(facts, require=True, mixed_precision="bf16")
        assert result.status == OK and "compute" not in result.message


def test_the_capability_is_asked_only_when_gpus_were_listed(tmp_path: Path) -> None:
    listed = Recorded("two-gpus.xml")
    probe_gpu({}, tmp_path, fake_which, listed)
    assert listed.calls == [["-q", "-x"], COMPUTE_CAP_QUERY]
    failing = Recorded("two-gpus.xml", code=9)
    assert probe_gpu({}, tmp_path, fake_which, failing).count == 0
    assert failing.calls == [["-q", "-x"]]


def test_parse_compute_caps_skips_what_is_not_a_capability() -> None:
    assert parse_compute_caps("0, 8.9\n1, [N/A]\n2, 12.0\n\nFailed to read\n") == {0: "8.9", 2: "12.0"}


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


def test_a_hanging_capability_query_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entrypoint.probes.gpu as gpu

    pid_file = tmp_path / "child.pid"
    xml = FIXTURES / "two-gpus.xml"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = "-q" ]; then cat {xml}; exit 0; fi\nsleep 300 &\necho $! > {pid_file}\nwait\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(gpu, "NVIDIA_SMI_TIMEOUT_S", 1.0)
    facts = probe_gpu({}, tmp_path, lambda name: str(fake))
    assert facts.error is None and facts.count == 2
    assert [device.compute_capability for device in facts.devices] == [None, None]
    assert _ends_within(int(pid_file.read_text()), 10.0)


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
    assert _ends_within(int(pid_file.read_text()), 10.0)


def _ends_within(pid: int, timeout_s: float) -> bool:
    """True once the process has ended (a pidfd turns readable then); False if it still runs at the bound.
    The kill is asynchronous: the process may close its pipes a moment before it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(pidfd)
