"""The slim image (preflight only) in a real container with a 1.5-CPU quota, a 64 MB /dev/shm and mounted
output/backups: the report follows the quota, warns about shared memory, quarantines the truncated
checkpoint on the mounted volume without changing a byte, chooses the valid one, and the exec'd command runs
as the image's non-root user and receives `docker stop`'s SIGTERM itself."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.container.conftest import (
    APP_UID,
    PROBE,
    TRUNCATED_UPDATE,
    VALID_UPDATE,
    Mounts,
    container_env,
    docker,
    first_json,
    volume_args,
    wait_for_file,
)

pytestmark = [pytest.mark.container, pytest.mark.slow]


def run_probe(image: str, mounts: Mounts, extra: list[str]) -> tuple[dict[str, Any], int, str]:
    """Start the image with the probe as the trainer, stop it, and return (stdout report, exit code, logs)."""
    name = f"f5tts-test-{uuid.uuid4().hex[:8]}"
    env_args = [arg for key, value in container_env(mounts).items() for arg in ("--env", f"{key}={value}")]
    try:
        docker(
            "run",
            "--detach",
            "--name",
            name,
            *extra,
            *volume_args(mounts),
            *env_args,
            image,
            "--json",
            "--",
            "python",
            "-c",
            PROBE,
        )
        wait_for_file(mounts.output / "probe.json", name)
        docker("stop", "--time", "30", name)
        exit_code = int(docker("wait", name).stdout.strip())
        logs = docker("logs", name).stdout
        return first_json(logs), exit_code, logs
    finally:
        docker("rm", "--force", name, check=False)


def test_preflight_in_a_limited_container(slim_image: str, mounts: Mounts) -> None:
    truncated_bytes = (mounts.output / "model_last.pt").read_bytes()
    report, exit_code, _logs = run_probe(slim_image, mounts, ["--cpus=1.5", "--shm-size=64m"])

    # CPUs: the 1.5-CPU CFS quota, floored, and the workers and threads that follow from it.
    cpu = report["cpu"]
    assert cpu["usable_exact"] == pytest.approx(1.5)
    assert cpu["usable"] == 1
    assert "quota" in cpu["source"] or "cgroup" in cpu["source"], cpu["source"]
    assert cpu["workers"] == 1 and cpu["threads"] == 1, cpu

    # Shared memory: 64 MB cannot hold 1 worker x 256 MB.
    shm = [check for check in report["checks"] if check["name"] == "shm"]
    assert len(shm) == 1 and shm[0]["status"] == "warn", shm
    assert report["status"] == "warn"

    # The truncated model_last.pt is quarantined on the mounted volume, byte-identical; the valid one chosen.
    assert len(report["quarantined"]) == 1, report["quarantined"]
    moved = report["quarantined"][0]
    assert moved["path"] == "/workspace/data/output/model_last.pt"
    moved_on_host = mounts.output / Path(moved["moved_to"]).relative_to("/workspace/data/output")
    assert moved_on_host.read_bytes() == truncated_bytes
    assert not (mounts.output / "model_last.pt").exists()
    assert moved_on_host.with_name(moved_on_host.name + ".json").is_file()
    assert moved["cause"].startswith("truncated"), moved["cause"]
    assert report["checkpoint"]["chosen"] == f"/workspace/data/output/model_{VALID_UPDATE}.pt"
    assert report["checkpoint"]["update"] == VALID_UPDATE != TRUNCATED_UPDATE
    assert (mounts.output / f"model_{VALID_UPDATE}.pt").is_file()
    assert report["trainer"]["argv"][:2] == ["python", "-c"]

    # The same report is written to the output volume.
    on_disk = json.loads((mounts.output / "preflight" / "report.json").read_text())
    assert on_disk["checkpoint"] == report["checkpoint"] and on_disk["cpu"] == report["cpu"]

    # The exec'd command is PID 1 itself (the preflight replaced itself), runs as the non-root user, and
    # `docker stop` delivered SIGTERM (15) to it: it exited 0 from its handler instead of being killed.
    probe = json.loads((mounts.output / "probe.json").read_text())
    assert probe["pid"] == 1, probe
    assert probe["uid"] == APP_UID and probe["gid"] == APP_UID
    assert probe["workers"] == str(cpu["workers"])
    assert probe["cwd"] == "/workspace"
    assert (mounts.output / "probe-signal.txt").read_text() == "15"
    assert exit_code == 0


def test_with_an_init_process_the_signal_is_forwarded(slim_image: str, mounts: Mounts) -> None:
    """compose.yaml sets init: true: the trainer is then the init's child and still gets SIGTERM."""
    report, exit_code, _logs = run_probe(slim_image, mounts, ["--init", "--cpus=1.5", "--shm-size=256m"])
    checks = {check["name"]: check["status"] for check in report["checks"]}
    assert checks["init"] == "ok" and checks["shm"] == "ok", checks
    probe = json.loads((mounts.output / "probe.json").read_text())
    assert probe["ppid"] == 1 and probe["pid"] != 1, probe
    assert (mounts.output / "probe-signal.txt").read_text() == "15"
    assert exit_code == 0


def test_a_configuration_error_exits_2_with_one_line(slim_image: str, mounts: Mounts) -> None:
    done = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            *volume_args(mounts),
            "--env",
            "MODEL_PRESET=F5TTS_Huge",
            slim_image,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    message = (done.stdout + done.stderr).strip().splitlines()
    assert any("MODEL_PRESET='F5TTS_Huge'" in line for line in message), message
    assert "Traceback" not in done.stdout + done.stderr
