"""`make host-check`: is this machine (a VM with a GPU passed through) ready for `docker compose up train`?

    python -m tools.host_check [--env-file .env] [--image IMAGE]

One line per check (ok / warn / fail) with the fix. Each check runs one command and hands its exit code and
output to a pure parser (the compute-capability line parses the driver line's nvidia-smi output), so the
parsers are tested on recorded outputs. Exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from entrypoint.checks.gpu import capability_tuple, capability_verdict
from entrypoint.checks.result import FAIL, WARN

# The image's default base; its NVIDIA_REQUIRE_CUDA makes the toolkit refuse drivers older than CUDA 12.8.
DEFAULT_BASE_IMAGE = "nvidia/cuda:12.8.1-base-ubuntu24.04"
# CUDA 12.8 needs driver 570.26 or newer on Linux (CUDA 12.8 release notes).
MIN_DRIVER = (570, 26)
# !reset / !override (compose.cpu.yaml, compose.gpu-ids.yaml) arrived in Compose 2.24.4.
MIN_COMPOSE = (2, 24, 4)
# Releases before 1.17.8 have the container-escape flaws CVE-2025-23266 / CVE-2025-23267.
MIN_TOOLKIT = (1, 17, 8)
COMMAND_TIMEOUT_S = 120.0
# The MIXED_PRECISION setting's default (entrypoint/settings.py), used when the settings do not load.
DEFAULT_MIXED_PRECISION = "bf16"
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure --runtime=docker && "
    "sudo systemctl restart docker` (docs/proxmox.md)"
)


@dataclass(frozen=True)
class HostCheck:
    name: str
    status: str  # ok | warn | fail
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status:>4}] {self.name}: {self.message}"
        return f"{text} -- {self.fix}" if self.fix and self.status != "ok" else text


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _not_found(rc: int) -> bool:
    return rc == 127


# --- parsers: (exit code, combined output) -> HostCheck ---------------------------------------------------


NVIDIA_SMI_QUERY = "--query-gpu=index,name,driver_version,memory.total,compute_cap"


def _gpu_rows(output: str) -> list[list[str]]:
    """The rows of NVIDIA_SMI_QUERY's output (a driver that does not know compute_cap leaves it out)."""
    return [
        [field.strip() for field in line.split(",")]
        for line in output.strip().splitlines()
        if line.count(",") >= 3
    ]


def parse_nvidia_smi(rc: int, output: str) -> HostCheck:
    """`nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv,noheader`."""
    name = "NVIDIA driver"
    if _not_found(rc):
        return HostCheck(
            name, "fail", "nvidia-smi not found", "install the NVIDIA driver in this VM (docs/proxmox.md)"
        )
    if "is not a valid field to query" in output:
        # compute_cap arrived in nvidia-smi long before driver 570, so a driver without it is too old anyway.
        return HostCheck(
            name,
            "fail",
            f"this nvidia-smi does not know compute_cap: the driver is older than {MIN_DRIVER[0]}",
            "install driver 570 or newer (e.g. `sudo apt install nvidia-driver-570-server`) and reboot",
        )
    if "No devices were found" in output:
        return HostCheck(
            name,
            "fail",
            "the driver is loaded but sees no GPU",
            "check the VM's hostpci entry and `lspci -nnk | grep -A3 NVIDIA` in the VM (docs/proxmox.md)",
        )
    if "couldn't communicate with the NVIDIA driver" in output or rc != 0:
        first = output.strip().splitlines()[0] if output.strip() else f"exit code {rc}"
        return HostCheck(
            name,
            "fail",
            first,
            "check `lspci -nnk | grep -A3 NVIDIA` shows `Kernel driver in use: nvidia`; after a kernel update "
            "rebuild the driver (dkms autoinstall) and reboot; if it fails only after a VM reboot, stop and "
            "start the VM from Proxmox (GPU reset, docs/proxmox.md)",
        )
    gpus = _gpu_rows(output)
    if not gpus:
        return HostCheck(
            name, "fail", "nvidia-smi lists no GPU", "pass the GPU through to this VM (docs/proxmox.md)"
        )
    driver = gpus[0][2]
    described = "; ".join(
        f"{g[0]}: {g[1]} {g[3]}" + (f", compute {g[4]}" if len(g) > 4 and capability_tuple(g[4]) else "")
        for g in gpus
    )
    if version_tuple(driver)[:2] < MIN_DRIVER:
        return HostCheck(
            name,
            "fail",
            f"driver {driver} is older than {MIN_DRIVER[0]}.{MIN_DRIVER[1]}, which CUDA 12.8 needs ({described})",
            "install driver 570 or newer (e.g. `sudo apt install nvidia-driver-570-server`) and reboot",
        )
    return HostCheck(name, "ok", f"driver {driver}, {len(gpus)} GPU(s): {described}")


def parse_compute_capability(rc: int, output: str, mixed_precision: str) -> HostCheck | None:
    """The GPUs' compute capabilities from NVIDIA_SMI_QUERY's output, against torch's kernels and the
    MIXED_PRECISION setting; None when nvidia-smi listed no GPU (the driver line says why)."""
    gpus = _gpu_rows(output) if rc == 0 else []
    if not gpus:
        return None
    name = "GPU compute capability"
    cards = [(f"GPU {g[0]} {g[1]}", g[4] if len(g) > 4 else None) for g in gpus]
    verdict = capability_verdict(cards, mixed_precision)
    if verdict is not None:
        status, message, fix = verdict
        return HostCheck(name, {FAIL: "fail", WARN: "warn"}[status], message, fix)
    unknown = [label for label, cap in cards if capability_tuple(cap) is None]
    if unknown:
        return HostCheck(
            name,
            "warn",
            f"nvidia-smi does not report it for {', '.join(unknown)}",
            "check the card is Volta (7.0) or newer; torch 2.9.1 has no kernels for older ones (docs/proxmox.md)",
        )
    return HostCheck(name, "ok", ", ".join(f"{label} {cap}" for label, cap in cards))


def parse_ctk_version(rc: int, output: str) -> HostCheck:
    """`nvidia-ctk --version`: `NVIDIA Container Toolkit CLI version 1.17.8`."""
    name = "NVIDIA Container Toolkit"
    if _not_found(rc):
        return HostCheck(name, "fail", "nvidia-ctk not found", TOOLKIT_FIX)
    match = re.search(r"version\s+(\d+\.\d+\.\d+)", output)
    if rc != 0 or match is None:
        return HostCheck(name, "fail", f"cannot read its version (exit code {rc})", TOOLKIT_FIX)
    version = match.group(1)
    if version_tuple(version) < MIN_TOOLKIT:
        return HostCheck(
            name,
            "warn",
            f"version {version} is older than {'.'.join(map(str, MIN_TOOLKIT))} (known container-escape fixes)",
            "upgrade the nvidia-container-toolkit package, then `sudo systemctl restart docker`",
        )
    return HostCheck(name, "ok", f"version {version}")


def parse_docker_runtimes(rc: int, output: str) -> HostCheck:
    """`docker info --format '{{json .Runtimes}}'`."""
    name = "Docker runtimes"
    if _not_found(rc):
        return HostCheck(
            name, "fail", "docker not found", "install Docker Engine from Docker's apt repository (not snap)"
        )
    if "permission denied" in output and "docker.sock" in output:
        return HostCheck(
            name, "fail", "no permission to use Docker", "`sudo usermod -aG docker $USER`, then log in again"
        )
    if "Cannot connect to the Docker daemon" in output or rc != 0:
        return HostCheck(
            name, "fail", "the Docker daemon is not reachable", "`sudo systemctl enable --now docker`"
        )
    try:
        runtimes = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return HostCheck(name, "fail", "cannot read `docker info`", "run `docker info` and read its error")
    if "nvidia" not in runtimes:
        return HostCheck(
            name, "fail", f"no nvidia runtime (only: {', '.join(sorted(runtimes))})", TOOLKIT_FIX
        )
    return HostCheck(name, "ok", f"nvidia runtime registered ({', '.join(sorted(runtimes))})")


def parse_docker_gpu_run(rc: int, output: str, image: str = DEFAULT_BASE_IMAGE) -> HostCheck:
    """`docker run --rm --gpus all IMAGE nvidia-smi -L`."""
    name = "Docker GPU access"
    if _not_found(rc):
        return HostCheck(name, "fail", "docker not found", "install Docker Engine (not snap)")
    if 'could not select device driver ""' in output:
        return HostCheck(
            name, "fail", 'could not select device driver "" with capabilities: [[gpu]]', TOOLKIT_FIX
        )
    if "unsatisfied condition: cuda>=" in output or "CUDA driver version is insufficient" in output:
        return HostCheck(
            name,
            "fail",
            "the driver is too old for the image's CUDA",
            "install NVIDIA driver 570 or newer in the VM and reboot",
        )
    if "Cannot connect to the Docker daemon" in output:
        return HostCheck(
            name, "fail", "the Docker daemon is not reachable", "`sudo systemctl enable --now docker`"
        )
    if "pull access denied" in output or "manifest unknown" in output:
        return HostCheck(
            name, "warn", f"cannot get {image} to test with", "`docker pull` it, or pass --image"
        )
    if "no such file or directory" in output and "nvidia-cuda-mps-control" in output:
        return HostCheck(
            name,
            "fail",
            "Docker from snap cannot use the toolkit",
            "remove the snap and install Docker Engine via apt",
        )
    gpus = [line for line in output.splitlines() if re.match(r"GPU \d+:", line.strip())]
    if rc != 0 or not gpus:
        last = output.strip().splitlines()[-1] if output.strip() else f"exit code {rc}"
        return HostCheck(name, "fail", last, TOOLKIT_FIX)
    return HostCheck(name, "ok", f"containers see {len(gpus)} GPU(s): {gpus[0].strip()}")


def parse_compose_version(rc: int, output: str) -> HostCheck:
    """`docker compose version --short`: `2.29.7` (some builds print `v2.29.7`)."""
    name = "Docker Compose"
    if "Cannot connect to the Docker daemon" in output:
        return HostCheck(
            name, "fail", "the Docker daemon is not reachable", "`sudo systemctl enable --now docker`"
        )
    if _not_found(rc) or "is not a docker command" in output or "unknown command" in output:
        return HostCheck(
            name,
            "fail",
            "the Compose plugin is missing",
            "`sudo apt install docker-compose-plugin` (Compose v2)",
        )
    match = re.search(r"(\d+\.\d+\.\d+)", output)
    if rc != 0 or match is None:
        return HostCheck(
            name, "fail", f"cannot read its version (exit code {rc})", "run `docker compose version`"
        )
    version = match.group(1)
    if version_tuple(version) < MIN_COMPOSE:
        return HostCheck(
            name,
            "fail",
            f"version {version} is older than {'.'.join(map(str, MIN_COMPOSE))} (needed for !reset in "
            "compose.cpu.yaml and GPU reservations)",
            "upgrade docker-compose-plugin from Docker's apt repository",
        )
    return HostCheck(name, "ok", f"version {version}")


def disk_needs(checkpoint_bytes: int, keep_checkpoints: int, backup_keep: int) -> tuple[int, int]:
    """Peak bytes in OUTPUT_DIR and in BACKUP_DIR. OUTPUT_DIR: the numbered checkpoints kept, a numbered
    temp, model_last.pt and its temp; the two temps coexist when SAVE_EVERY_UPDATES is a multiple of
    LAST_EVERY_UPDATES. BACKUP_DIR: the backups kept and the temp of the next one."""
    kept = max(keep_checkpoints, 0)
    return checkpoint_bytes * (kept + 3), checkpoint_bytes * (backup_keep + 1)


def check_disk(label: str, folder: Path, free_bytes: int, needed_bytes: int, fix: str = "") -> HostCheck:
    name = f"free disk ({label})"
    shown = f"{free_bytes / 1e9:.1f} GB free at {folder}"
    if free_bytes < needed_bytes:
        return HostCheck(
            name,
            "fail",
            f"{shown}, {needed_bytes / 1e9:.1f} GB needed",
            fix or f"free space or point {label} at a bigger disk in .env",
        )
    return HostCheck(name, "ok", f"{shown} (needs {needed_bytes / 1e9:.1f} GB)")


def check_separate_disks(output_dev: int, backup_dev: int) -> HostCheck:
    if output_dev == backup_dev:
        return HostCheck(
            "backup disk",
            "warn",
            "BACKUP_DIR is on the same file system as OUTPUT_DIR: one disk failure loses both",
            "point BACKUP_DIR at another disk (docs/proxmox.md)",
        )
    return HostCheck("backup disk", "ok", "BACKUP_DIR is on another file system than OUTPUT_DIR")


# --- running ---------------------------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], tuple[int, str]]


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Exit code and stdout+stderr; 127 when the program is missing, 124 when it hangs."""
    if shutil.which(argv[0]) is None:
        return 127, f"{argv[0]}: command not found"
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT_S:.0f} s"
    return done.returncode, done.stdout + done.stderr


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_checks(env_file: str | None) -> list[HostCheck]:
    from entrypoint.errors import ConfigError
    from entrypoint.presets import PRESETS
    from entrypoint.settings import load_settings

    try:
        settings = load_settings(cli_env_file=env_file).settings
    except ConfigError as error:
        return [HostCheck("settings", "fail", error.message, error.fix or "fix the value in .env")]
    one = (
        int(settings.checkpoint_size_gb * 1e9)
        if settings.checkpoint_size_gb
        else PRESETS[settings.model_preset].estimated_checkpoint_bytes()
    )
    output_need, backup_need = disk_needs(one, settings.keep_checkpoints, settings.backup_keep)
    output_at, backup_at = _existing(settings.output_dir), _existing(settings.backup_dir)
    output_device, backup_device = os.stat(output_at).st_dev, os.stat(backup_at).st_dev
    if output_device == backup_device:
        # One file system holds both, so its free space must cover both.
        checks = [
            check_disk(
                "OUTPUT_DIR + BACKUP_DIR",
                output_at,
                shutil.disk_usage(output_at).free,
                output_need + backup_need,
                fix="free space, or point BACKUP_DIR at another disk in .env",
            )
        ]
    else:
        checks = [
            check_disk("OUTPUT_DIR", output_at, shutil.disk_usage(output_at).free, output_need),
            check_disk("BACKUP_DIR", backup_at, shutil.disk_usage(backup_at).free, backup_need),
        ]
    checks.append(check_separate_disks(output_device, backup_device))
    missing = [
        str(folder)
        for folder in (settings.output_dir, settings.backup_dir, settings.dataset_dir, settings.log_dir)
        if not folder.is_dir()
    ]
    if missing:
        checks.append(
            HostCheck(
                "folders",
                "fail",
                f"missing: {', '.join(missing)}",
                f"`mkdir -p {' '.join(missing)}` as the user that owns the project (Compose does not create them)",
            )
        )
    return checks


def mixed_precision_of(env_file: str | None) -> str:
    """MIXED_PRECISION from the settings; its default when they do not load (disk_checks says why)."""
    from entrypoint.errors import ConfigError
    from entrypoint.settings import load_settings

    try:
        return load_settings(cli_env_file=env_file).settings.mixed_precision
    except ConfigError:
        return DEFAULT_MIXED_PRECISION


def host_checks(run: Runner, image: str, mixed_precision: str = DEFAULT_MIXED_PRECISION) -> list[HostCheck]:
    rc, output = run(["nvidia-smi", NVIDIA_SMI_QUERY, "--format=csv,noheader"])
    capability = parse_compute_capability(rc, output, mixed_precision)
    return [
        parse_nvidia_smi(rc, output),
        *([capability] if capability is not None else []),
        parse_ctk_version(*run(["nvidia-ctk", "--version"])),
        parse_docker_runtimes(*run(["docker", "info", "--format", "{{json .Runtimes}}"])),
        parse_docker_gpu_run(
            *run(["docker", "run", "--rm", "--gpus", "all", image, "nvidia-smi", "-L"]), image
        ),
        parse_compose_version(*run(["docker", "compose", "version", "--short"])),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="host-check", description=__doc__.split("\n")[0])
    parser.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    parser.add_argument("--image", default=DEFAULT_BASE_IMAGE, help="image for the GPU test run")
    args = parser.parse_args(argv)
    checks = host_checks(run_command, args.image, mixed_precision_of(args.env_file)) + disk_checks(
        args.env_file
    )
    for check in checks:
        print(check.line())
    failed = [check for check in checks if check.status == "fail"]
    print(f"host check: {len(failed)} failed, {sum(c.status == 'warn' for c in checks)} warning(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
