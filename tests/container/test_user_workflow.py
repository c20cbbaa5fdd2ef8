"""The users' own workflow with Docker Engine and Docker Compose v2, in a copy of their checkout, with the
project's compose.yaml + compose.cpu.yaml and a test override for what this machine lacks (a local base
image, a memlock limit it can grant) and a 1.5-CPU limit:

build; prepare a tiny dataset with the README's own `docker run ... prepare_csv_wavs` command;
`docker compose run --rm preflight`; `up -d train` on the tiny preset; `stop` (saves on SIGTERM, exits 0);
`up` again (resumes at the last save); a truncated `model_last.pt` (quarantined with its bytes, training
resumes from a numbered checkpoint or a backup); `kill -9` of the trainer (the restart policy restarts it and
it resumes); a configuration error (stops after the restart budget, `make train` fails); a small `shm_size`.

Only what users see is asserted: exit codes, log lines, files on the host, and the report's fields.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.container.conftest import (
    APP_UID,
    FULL_TAG,
    GRACE_PERIOD_S,
    TINY_TRAINING,
    BuildFacts,
    TrainService,
    UserProject,
    prepare_dataset,
)

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.trainer]

CONTAINER_OUTPUT = "/workspace/data/output"
CONTAINER_BACKUPS = "/workspace/data/backups"


def trainer_host_pid(container_pid: int) -> int:
    """The trainer: the only child of the container's init (compose.yaml sets `init: true`)."""
    children = Path(f"/proc/{container_pid}/task/{container_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.fixture(scope="module")
def project(user_project: UserProject, full_image: BuildFacts) -> UserProject:
    user_project.write_env(**TINY_TRAINING)
    return user_project


# The first test to ask for the image builds it: cold, that downloads the trainer stack.
@pytest.mark.timeout(3600)
def test_build_prepare_preflight_train_stop_resume_and_recover(project: UserProject) -> None:
    train = TrainService(project)
    prepare_dataset(project, FULL_TAG)

    started = time.monotonic()
    preflight = project.compose("run", "--rm", "preflight", timeout=300)
    print(f"\ndocker compose run --rm preflight: {time.monotonic() - started:.1f} s")
    assert preflight.returncode == 0, preflight.stdout[-3000:] + preflight.stderr[-2000:]

    # First start: trains from scratch and saves model_last.pt every 2 updates, a numbered file every 4.
    train.up()
    saves = train.wait_for_saves(3)
    assert train.resumed() == []
    report = json.loads((project.output / "preflight" / "report.json").read_text())
    # `cpus: 1.5` is a CFS quota of 1.5 CPUs: one whole CPU to plan workers and threads with.
    assert report["cpu"]["usable"] == 1, report["cpu"]

    # `docker compose stop`: SIGTERM, a save of the update reached, exit 0 within the grace period.
    stop_seconds = train.stop()
    print(f"docker compose stop train: {stop_seconds:.1f} s")
    assert stop_seconds < GRACE_PERIOD_S
    last_saved = train.saved()[-1]
    assert last_saved >= saves[-1]

    # `up` again: resumes from model_last.pt at the last saved update, and trains on.
    train.up()
    path, update = train.wait_for_resumes(1)
    assert (path, update) == (f"{CONTAINER_OUTPUT}/model_last.pt", last_saved), train.tail()
    saves_before = len(train.saved())
    train.wait_for_saves(saves_before + 2)
    train.stop()
    last_saved = train.saved()[-1]

    # A truncated model_last.pt (a copy cut short on the host): quarantined with its bytes, and training
    # resumes from a numbered checkpoint or a backup instead.
    last = project.output / "model_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    truncated = last.read_bytes()
    train.up()
    path, update = train.wait_for_resumes(2)
    assert path != f"{CONTAINER_OUTPUT}/model_last.pt", train.tail()
    assert path.startswith((f"{CONTAINER_OUTPUT}/model_", f"{CONTAINER_BACKUPS}/")), path
    assert 0 < update <= last_saved
    quarantined = project.output / "model_last.pt.corrupted"
    assert quarantined.read_bytes() == truncated
    assert (project.output / "model_last.pt.corrupted.json").is_file()

    # kill -9 of the trainer: the container exits, the restart policy starts it again, and it resumes at or
    # after the last save it printed.
    saves_before = len(train.saved())
    train.wait_for_saves(saves_before + 1)
    state = train.inspect()
    restarts = state["RestartCount"]
    saved_before_kill = train.saved()[-1]
    os.kill(trainer_host_pid(state["State"]["Pid"]), signal.SIGKILL)
    path, update = train.wait_for_resumes(3)
    assert train.inspect()["RestartCount"] == restarts + 1
    assert update >= saved_before_kill, (path, update, saved_before_kill)
    train.wait_for_saves(len(train.saved()) + 1)
    train.stop()

    # Every file the container wrote on the host belongs to APP_UID, not root.
    written = [p for folder in (project.output, project.backups) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name.startswith("model_") for p in written)
    assert {
        p.relative_to(project.data).as_posix(): p.stat().st_uid for p in written if p.stat().st_uid != APP_UID
    } == {}
    assert project.compose("down", "--timeout", "30").returncode == 0


def test_a_configuration_error_stops_after_the_restart_budget_and_make_train_fails(
    project: UserProject,
) -> None:
    project.write_env(**{**TINY_TRAINING, "DATALOADER_WORKERS": "sixteen"})
    try:
        done = subprocess.run(
            ["make", "train"], cwd=project.root, capture_output=True, text=True, timeout=600, check=False
        )
        output = done.stdout + done.stderr
        assert done.returncode != 0, output[-3000:]
        assert "DATALOADER_WORKERS='sixteen'" in output, output[-3000:]
        assert "exited with code 2" in output, output[-3000:]
        state = TrainService(project).inspect()
        # restart: on-failure:3 in compose.yaml: the first start and three restarts, then it stays down.
        assert state["RestartCount"] == 3 and state["State"]["ExitCode"] == 2, state["State"]

        checked = subprocess.run(
            ["make", "preflight-docker"], cwd=project.root, capture_output=True, text=True, timeout=300
        )
        assert checked.returncode != 0, checked.stdout + checked.stderr
    finally:
        project.compose("down", "--timeout", "30")
        project.write_env(**TINY_TRAINING)


def test_a_small_shm_size_is_caught_by_the_shm_check(project: UserProject) -> None:
    project.write_env(**{**TINY_TRAINING, "SHM_SIZE": "64m"})
    try:
        done = project.compose("run", "--rm", "preflight", "--json", timeout=300)
    finally:
        project.write_env(**TINY_TRAINING)
    report = json.loads(done.stdout[done.stdout.index("{") :])
    shm = [check for check in report["checks"] if check["name"] == "shm"]
    assert len(shm) == 1 and shm[0]["status"] in ("warn", "fail"), shm
    assert report["cpu"]["usable"] == 1, report["cpu"]
