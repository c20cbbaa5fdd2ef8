"""What GPUs this container sees, read from `nvidia-smi -q -x` (torch is not imported: it takes seconds).

The XML report does not always carry the compute capability, so it comes from a second call,
`nvidia-smi --query-gpu=index,compute_cap --format=csv,noheader`, made only when the first listed GPUs.

A missing tool, a hanging driver or garbage output is a fact to report, never a crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

NVIDIA_SMI_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_mib: int | None
    uuid: str
    compute_capability: str | None = None  # "8.9"; None when nvidia-smi could not tell


@dataclass(frozen=True)
class GpuFacts:
    devices: tuple[GpuDevice, ...]  # the GPUs this process may use (CUDA_VISIBLE_DEVICES applied)
    driver_version: str | None
    cuda_version: str | None  # the highest CUDA version the driver supports, as nvidia-smi reports it
    tool: str  # "nvidia-smi" when it answered, else "none"
    error: str | None  # why nothing could be read, in words
    device_nodes: tuple[str, ...]  # /dev/nvidia* present (a GPU passed in without the tool shows here)

    @property
    def count(self) -> int:
        return len(self.devices)


Runner = Callable[[list[str]], tuple[int, str, str]]

COMPUTE_CAP_QUERY = ["--query-gpu=index,compute_cap", "--format=csv,noheader"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    # Its own session, so a hung driver call and anything it started can be killed together.
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stdout, stderr


def parse_nvidia_smi_xml(text: str) -> tuple[list[GpuDevice], str | None, str | None]:
    """Devices, driver version and CUDA version from `nvidia-smi -q -x` output."""
    root = ElementTree.fromstring(text)
    driver = (root.findtext("driver_version") or "").strip() or None
    cuda = (root.findtext("cuda_version") or "").strip() or None
    devices = []
    for position, gpu in enumerate(root.findall("gpu")):
        name = (gpu.findtext("product_name") or "unknown GPU").strip()
        uuid = (gpu.findtext("uuid") or "").strip()
        minor = (gpu.findtext("minor_number") or "").strip()
        index = int(minor) if minor.isdigit() else position
        total = (gpu.findtext("fb_memory_usage/total") or "").strip()
        match = re.match(r"(\d+)\s*MiB", total)
        devices.append(GpuDevice(index, name, int(match.group(1)) if match else None, uuid))
    return devices, driver, cuda


def parse_compute_caps(text: str) -> dict[int, str]:
    """nvidia-smi index -> compute capability from `--query-gpu=index,compute_cap --format=csv,noheader`
    (`0, 8.9` per line); `[N/A]` and lines that are not such pairs are left out."""
    caps = {}
    for line in text.splitlines():
        index, _, cap = (part.strip() for part in line.partition(","))
        if index.isdigit() and re.fullmatch(r"\d+\.\d+", cap):
            caps[int(index)] = cap
    return caps


def _read_compute_caps(tool: str, run: Runner) -> dict[int, str]:
    # Unknown capabilities are a gap in the report, not a reason to fail: the XML already answered.
    try:
        code, stdout, _ = run([tool, *COMPUTE_CAP_QUERY])
    except (subprocess.TimeoutExpired, OSError):
        return {}
    return parse_compute_caps(stdout) if code == 0 else {}


def _with_compute_caps(devices: list[GpuDevice], caps: Mapping[int, str]) -> list[GpuDevice]:
    # nvidia-smi's index is its enumeration order, the order of the <gpu> elements in its XML report.
    return [
        replace(device, compute_capability=caps.get(position, device.compute_capability))
        for position, device in enumerate(devices)
    ]


def _apply_visible_devices(devices: list[GpuDevice], environ: Mapping[str, str]) -> list[GpuDevice]:
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return devices
    wanted = [item.strip() for item in visible.split(",") if item.strip()]
    chosen = []
    for item in wanted:
        for position, device in enumerate(devices):
            if item == str(position) or (item.startswith("GPU-") and device.uuid.startswith(item)):
                if device not in chosen:
                    chosen.append(device)
                break
        else:
            break  # CUDA stops at the first id it does not know
    return chosen


def probe_gpu(
    environ: Mapping[str, str] | None = None,
    dev_root: Path = Path("/dev"),
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = _run,
) -> GpuFacts:
    environ = os.environ if environ is None else environ
    try:
        nodes = tuple(sorted(entry.name for entry in dev_root.iterdir() if entry.name.startswith("nvidia")))
    except OSError:
        nodes = ()
    tool = which("nvidia-smi")
    if tool is None:
        return GpuFacts((), None, None, "none", "nvidia-smi not found", nodes)
    try:
        code, stdout, stderr = run([tool, "-q", "-x"])
    except subprocess.TimeoutExpired:
        return GpuFacts(
            (), None, None, "none", f"nvidia-smi did not answer in {NVIDIA_SMI_TIMEOUT_S:.0f} s", nodes
        )
    except OSError as error:
        return GpuFacts((), None, None, "none", f"nvidia-smi could not run: {error.strerror}", nodes)
    if code != 0:
        first = (stderr.strip() or stdout.strip() or f"exit code {code}").splitlines()[0]
        return GpuFacts((), None, None, "none", f"nvidia-smi failed: {first}", nodes)
    try:
        devices, driver, cuda = parse_nvidia_smi_xml(stdout)
    except ElementTree.ParseError:
        return GpuFacts(
            (), None, None, "none", "nvidia-smi printed something that is not its XML report", nodes
        )
    if devices:
        devices = _with_compute_caps(devices, _read_compute_caps(tool, run))
    return GpuFacts(tuple(_apply_visible_devices(devices, environ)), driver, cuda, "nvidia-smi", None, nodes)
