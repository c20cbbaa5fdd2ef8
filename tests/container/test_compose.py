"""compose.yaml itself, run by podman-compose with compose.cpu.yaml on the slim image: one .env with HOST
paths serves the host and the container (compose.yaml mounts the folders and pins the container-side
paths), the GPU reservation is dropped, init forwards SIGTERM, and the report shows the quota and the
quarantine as in test_slim_image.py.

podman-specific adjustments live in a third, test-only override file: the local slim image (already built, so nothing is built),
runc, a 1.5-CPU limit and 64 MB of shared memory (to see the warning), and nofile/nproc/memlock/stack
limits this machine allows (compose.yaml's memlock -1 needs a host that permits raising it)."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.container.conftest import (
    APP_UID,
    PROBE,
    ROOT,
    VALID_UPDATE,
    Mounts,
    first_json,
    podman,
    wait_for_file,
)

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _allowed(limit: int, wanted: int) -> int:
    """`wanted`, or the host's hard limit where the host does not permit raising to it."""
    _soft, hard = resource.getrlimit(limit)
    if hard == resource.RLIM_INFINITY:
        return wanted
    return hard if wanted == -1 else min(wanted, hard)


def podman_compose_override(image: str) -> str:
    command = json.dumps(["--json", "--", "python", "-c", PROBE])
    memlock = _allowed(resource.RLIMIT_MEMLOCK, -1)
    stack = _allowed(resource.RLIMIT_STACK, 67108864)
    return f"""
services:
  train:
    image: {image}
    runtime: runc
    cpus: 1.5
    shm_size: 64m
    ulimits:
      nofile: {{soft: 4096, hard: 4096}}
      nproc: {{soft: 4096, hard: 4096}}
      memlock: {memlock}
      stack: {stack}
    command: {command}
    restart: "no"
"""


def test_compose_file_runs_the_preflight_with_the_cpu_override(
    slim_image: str, mounts: Mounts, tmp_path: Path
) -> None:
    pytest.importorskip("podman_compose", reason="podman-compose (test extra) is not installed")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("compose.yaml", "compose.cpu.yaml"):
        shutil.copy2(ROOT / name, project / name)
    (project / "compose.podman.yaml").write_text(podman_compose_override(slim_image))
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    # Host paths, as a user writes them for `make preflight`; the container must see its own.
    (project / ".env").write_text(
        f"OUTPUT_DIR={mounts.output}\nBACKUP_DIR={mounts.backups}\nDATASET_DIR={mounts.dataset}\n"
        f"LOG_DIR={mounts.logs}\nPRETRAINED_DIR={pretrained}\n"
        "MODEL_PRESET=tiny\nDATALOADER_WORKERS=8\nCPU_RESERVE=1\nCHECKPOINT_SIZE_GB=0.001\nWAIT_TIMEOUT_S=0\n"
    )
    truncated_bytes = (mounts.output / "model_last.pt").read_bytes()
    name = f"f5tts-test-{uuid.uuid4().hex[:8]}"
    compose = [sys.executable, "-m", "podman_compose", "-p", name]
    files = ["-f", "compose.yaml", "-f", "compose.cpu.yaml", "-f", "compose.podman.yaml"]

    def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *files, *args], cwd=project, capture_output=True, text=True, timeout=300, check=False
        )

    try:
        up = run_compose("up", "-d", "train")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        listed = podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={name}", "--format", "{{.Names}}"
        )
        containers = listed.stdout.split()
        assert len(containers) == 1, listed.stdout
        container = containers[0]
        wait_for_file(mounts.output / "probe.json", container)
        podman("stop", "--time", "30", container)
        exit_code = int(podman("wait", container).stdout.strip())
        report = first_json(podman("logs", container).stdout)
        inspected = json.loads(podman("inspect", container).stdout)[0]
    finally:
        run_compose("down", "-t", "5")
        podman(
            "rm",
            "--force",
            *podman("ps", "-aq", "--filter", f"label=io.podman.compose.project={name}").stdout.split(),
            check=False,
        )

    # compose.yaml's settings reached the container: pinned paths won over the .env's host paths, shared
    # memory and init as configured, the CPU override dropped REQUIRE_GPU.
    assert report["checkpoint"]["chosen"] == f"/workspace/data/output/model_{VALID_UPDATE}.pt"
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert env["OUTPUT_DIR"] == "/workspace/data/output" and env["REQUIRE_GPU"] == "false"
    assert env["MODEL_PRESET"] == "tiny"
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["shm"]["status"] == "warn"
    assert checks["init"]["status"] == "ok", checks["init"]
    assert checks["gpu"]["status"] != "fail"
    assert report["cpu"]["usable_exact"] == pytest.approx(1.5) and report["cpu"]["workers"] == 1

    moved = report["quarantined"][0]
    assert moved["path"] == "/workspace/data/output/model_last.pt"
    assert (mounts.output / Path(moved["moved_to"]).name).read_bytes() == truncated_bytes
    # The dataset is mounted read-only, as compose.yaml says.
    mounted = {m["Destination"]: m for m in inspected["Mounts"]}
    assert (
        "ro" in mounted["/workspace/data/dataset"]["Options"] or not mounted["/workspace/data/dataset"]["RW"]
    )
    assert mounted["/workspace/data/output"]["RW"]

    probe = json.loads((mounts.output / "probe.json").read_text())
    assert probe["uid"] == APP_UID and probe["ppid"] == 1
    assert (mounts.output / "probe-signal.txt").read_text() == "15"
    assert exit_code == 0
