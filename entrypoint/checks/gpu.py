"""GPU presence, names, memory, driver and CUDA versions; the driver must be new enough for torch's CUDA."""

from __future__ import annotations

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult
from entrypoint.probes.gpu import GpuFacts

# torch 2.9.1 wheels from PyPI are built for CUDA 12.8: an older driver gives "CUDA driver version is
# insufficient for CUDA runtime version" at the first CUDA call.
TORCH_CUDA = (12, 8)
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` in the VM, "
    "and keep the GPU reservation of compose.yaml (docker run --gpus all); see docs/proxmox.md"
)


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def check_gpu(facts: GpuFacts, *, require: bool) -> CheckResult:
    if facts.count == 0:
        why = facts.error or "nvidia-smi lists no GPU"
        if facts.device_nodes and facts.error:
            why += f" although {', '.join('/dev/' + node for node in facts.device_nodes[:3])} exist"
        if require:
            return CheckResult("gpu", FAIL, f"no GPU visible ({why}) and REQUIRE_GPU=true", TOOLKIT_FIX)
        return CheckResult(
            "gpu", WARN, f"no GPU visible ({why}): training runs on the CPU, very slowly", TOOLKIT_FIX
        )
    names = ", ".join(
        f"{device.index}: {device.name}"
        + (f" {device.memory_mib / 1024:.0f} GiB" if device.memory_mib else "")
        for device in facts.devices
    )
    versions = f"driver {facts.driver_version or '?'}, CUDA {facts.cuda_version or '?'}"
    message = f"{facts.count} GPU(s) [{names}], {versions}"
    cuda = _version(facts.cuda_version)
    if cuda is not None and cuda[:2] < TORCH_CUDA:
        needed = ".".join(map(str, TORCH_CUDA))
        return CheckResult(
            "gpu",
            FAIL,
            f"{message}: the driver supports CUDA {facts.cuda_version} but torch needs CUDA {needed}",
            f"install an NVIDIA driver that supports CUDA {needed} (570 or newer) in the VM, then reboot it",
        )
    return CheckResult("gpu", OK, message)
