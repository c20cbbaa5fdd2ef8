"""GPU presence, names, memory, driver and CUDA versions; the driver must be new enough for torch's CUDA and
each GPU's compute capability must be one torch's kernels were built for."""

from __future__ import annotations

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult
from entrypoint.probes.gpu import GpuDevice, GpuFacts

# torch 2.9.1 wheels from PyPI are built for CUDA 12.8: an older driver gives "CUDA driver version is
# insufficient for CUDA runtime version" at the first CUDA call.
TORCH_CUDA = (12, 8)
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` in the VM, "
    "and keep the GPU reservation of compose.yaml (docker run --gpus all); see docs/proxmox.md"
)

# torch 2.9.1's CUDA 12.8 wheels carry kernels for sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120
# (torch._C._cuda_getArchFlags()); an older GPU (Pascal: 6.x) fails at the first kernel with "no kernel
# image is available for execution on the device".
MIN_COMPUTE_CAPABILITY = (7, 0)
# bf16 arithmetic in hardware arrived with Ampere (8.0); before that torch emulates it, slowly.
NATIVE_BF16_CAPABILITY = (8, 0)
SUPPORTED_GPUS_FIX = (
    "train on a GPU of compute capability 7.0 or newer (Volta, Turing, Ampere, Ada, Hopper, Blackwell; "
    "docs/proxmox.md), or leave this one out with GPU_DEVICE_IDS"
)


def capability_tuple(text: str | None) -> tuple[int, int] | None:
    """`8.9` -> (8, 9); None for anything else (unknown)."""
    parts = (text or "").strip().split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def _below(capability: str | None, floor: tuple[int, int]) -> bool:
    known = capability_tuple(capability)
    return known is not None and known < floor


def capability_verdict(
    cards: list[tuple[str, str | None]], mixed_precision: str
) -> tuple[str, str, str] | None:
    """(status, message, fix) for the worst of `cards` ((label, compute capability) each), or None when all
    are fine or unknown. Shared with `make host-check`."""
    too_old = [(label, cap) for label, cap in cards if _below(cap, MIN_COMPUTE_CAPABILITY)]
    if too_old:
        needed = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
        return (
            FAIL,
            f"{_named(too_old)}: torch 2.9.1 has no kernels for {'it' if len(too_old) == 1 else 'them'} "
            f"(it needs compute capability {needed} or newer)",
            SUPPORTED_GPUS_FIX,
        )
    no_bf16 = [(label, cap) for label, cap in cards if _below(cap, NATIVE_BF16_CAPABILITY)]
    if mixed_precision == "bf16" and no_bf16:
        return (
            WARN,
            f"{_named(no_bf16)}: no bf16 in hardware before compute capability 8.0, so MIXED_PRECISION=bf16 "
            "runs emulated and slowly",
            "set MIXED_PRECISION=fp16 in .env",
        )
    return None


def _named(cards: list[tuple[str, str | None]]) -> str:
    return ", ".join(f"{label} (compute capability {cap})" for label, cap in cards)


def _describe(device: GpuDevice) -> str:
    memory = f" {device.memory_mib / 1024:.0f} GiB" if device.memory_mib else ""
    capability = f", compute {device.compute_capability}" if device.compute_capability else ""
    return f"{device.index}: {device.name}{memory}{capability}"


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def check_gpu(facts: GpuFacts, *, require: bool, mixed_precision: str = "no") -> CheckResult:
    if facts.count == 0:
        why = facts.error or "nvidia-smi lists no GPU"
        if facts.device_nodes and facts.error:
            why += f" although {', '.join('/dev/' + node for node in facts.device_nodes[:3])} exist"
        if require:
            return CheckResult("gpu", FAIL, f"no GPU visible ({why}) and REQUIRE_GPU=true", TOOLKIT_FIX)
        return CheckResult(
            "gpu", WARN, f"no GPU visible ({why}): training runs on the CPU, very slowly", TOOLKIT_FIX
        )
    names = ", ".join(_describe(device) for device in facts.devices)
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
    verdict = capability_verdict(
        [(f"GPU {device.index} {device.name}", device.compute_capability) for device in facts.devices],
        mixed_precision,
    )
    if verdict is not None:
        status, problem, fix = verdict
        return CheckResult("gpu", status, f"{message}: {problem}", fix)
    return CheckResult("gpu", OK, message)


def check_processes(processes: int, gpus: int, trainer_mode: str) -> CheckResult | None:
    """TRAIN_PROCESSES against the GPUs this container sees; None for the usual one process per GPU."""
    if gpus and processes > gpus:
        return CheckResult(
            "processes",
            FAIL,
            f"TRAIN_PROCESSES={processes} but {gpus} GPU(s) are visible: process {gpus} and up would find no GPU",
            f"set TRAIN_PROCESSES to {gpus} or fewer (empty: one per visible GPU), or pass more GPUs to the "
            "container (NVIDIA_VISIBLE_DEVICES, compose.gpu-ids.yaml)",
        )
    if gpus or processes == 1:
        return None
    if trainer_mode == "stock":
        return CheckResult(
            "processes",
            FAIL,
            f"TRAIN_PROCESSES={processes} without a GPU: F5-TTS's own trainer (TRAINER_MODE=stock) trains "
            "several processes only on GPUs",
            "set TRAIN_PROCESSES=1, or use TRAINER_MODE=safe (several processes on the CPU, over Gloo)",
        )
    return CheckResult(
        "processes",
        OK,
        f"{processes} training processes on the CPU, one process group over Gloo (each trains on its share "
        "of the batches; the gradients are averaged)",
    )
