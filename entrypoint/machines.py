"""Training on several machines: what the plan adds (pure functions of the settings). Torch-free.

Accelerate's multi-machine launch does the training (modes.machines_launcher); this module says what each
machine's plan holds besides: machine 0 alone decides the checkpoint (the others plan no checkpoint action),
the network environment of NCCL and Gloo, and the estimate of time spent communicating per update.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from importlib import metadata
from pathlib import Path

from entrypoint.checkpoints.resolve import CheckpointPlan
from entrypoint.checks.result import OK, CheckResult
from entrypoint.presets import PRESETS
from entrypoint.settings import Settings

GRADIENT_BYTES_PER_PARAMETER = 4  # DDP all-reduces fp32 gradients (mixed precision keeps fp32 parameters)
# Distributions whose versions must be the same on every machine (absent ones compare as "not installed").
VERSIONED = (
    "torch",
    "torchaudio",
    "accelerate",
    "f5-tts",
    "nvidia-nccl-cu12",
    "nvidia-nccl-cu13",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime",
)


def meeting_port(settings: Settings) -> int:
    """The preflights meet one port above the rendezvous: the trainers' own store binds MAIN_PROCESS_PORT."""
    return settings.main_process_port + 1


def follower_checkpoint_plan(settings: Settings) -> CheckpointPlan:
    """A machine other than 0 decides nothing about checkpoints: it reads none, moves none, saves none."""
    return CheckpointPlan(
        chosen=None,
        candidate=None,
        load_path=None,
        kind="scratch",
        update=None,
        rejected=(),
        notes=(),
        actions=(),
        status=OK,
        message=(
            f"chosen by machine 0 ({settings.main_process_ip}) and sent to this machine over the process "
            f"group; checkpoints in {settings.output_dir} are neither read nor changed here"
        ),
        fix="",
    )


def apply_machine_environment(env: MutableMapping[str, str], settings: Settings) -> None:
    """The trainer's network environment across machines; a variable the user set wins."""
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        if not env.get(name):
            env.pop(name, None)  # an empty interface name would make NCCL/Gloo find no interface at all
    if settings.num_machines == 1:
        return
    if not settings.nccl_infiniband:
        env.setdefault("NCCL_IB_DISABLE", "1")  # plain TCP: IB/RoCE probing across VMs hangs or fails late
    # A collective that times out or a peer that is gone aborts the process instead of hanging it.
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")


def communication_seconds(parameters: float, machines: int, link_gbit_s: float) -> float:
    """Seconds one update spends in the ring all-reduce of the gradients between machines: each machine
    sends (and receives) 2(n-1)/n times the gradient bytes over its link."""
    if machines < 2:
        return 0.0
    sent = 2 * (machines - 1) / machines * parameters * GRADIENT_BYTES_PER_PARAMETER
    return sent * 8 / (link_gbit_s * 1e9)


def machine_check(settings: Settings) -> CheckResult:
    """Who this machine is, where machine 0 is, and the estimate of communication per update."""
    preset = PRESETS[settings.model_preset]
    parameters = preset.parameters_millions * 1e6
    seconds = communication_seconds(parameters, settings.num_machines, settings.link_gbit_s)
    gigabytes = parameters * GRADIENT_BYTES_PER_PARAMETER / 1e9
    role = "chooses the checkpoint and saves" if settings.machine_rank == 0 else "loads and saves nothing"
    return CheckResult(
        "machines",
        OK,
        f"machine {settings.machine_rank} of {settings.num_machines} ({role}); rendezvous "
        f"{settings.main_process_ip}:{settings.main_process_port}, preflights meet on port "
        f"{meeting_port(settings)}; each update all-reduces {gigabytes:.3g} GB of gradients "
        f"({preset.parameters_millions:g}M parameters): about {seconds:.3g} s per update over "
        f"{settings.link_gbit_s:g} Gbit/s (LINK_GBIT_S)",
    )


def installed_versions(project_version: str) -> dict[str, str]:
    """The versions every machine must share, read from package metadata (torch is not imported)."""
    versions = {"f5tts-preflight": project_version}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_fingerprint(path: Path, sample_bytes: int = 1 << 20) -> str:
    """Size plus a hash of the first and last MiB: equal files agree, different datasets almost surely differ,
    and a multi-GB raw.arrow costs two reads, not a full one."""
    import hashlib

    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(handle.read(sample_bytes))
            if size > sample_bytes:
                handle.seek(max(sample_bytes, size - sample_bytes))
                digest.update(handle.read(sample_bytes))
    except OSError:
        return "missing"
    return f"{size}:{digest.hexdigest()[:16]}"
