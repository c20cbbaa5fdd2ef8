"""The users' command for several machines, two Compose projects on this one Docker host standing in for two
machines: compose.yaml + compose.cpu.yaml + compose.multinode.yaml + the test override, host networking,
machine 0 at 127.0.0.1, each machine its own checkout, .env, dataset copy, output and log folders.

Machine 0 first trains alone (`up train`, MAX_UPDATES=2) as a user does before adding a machine; then both
start with NUM_MACHINES=2, agree, and resume from machine 0's checkpoint with the same weights; `docker
compose stop train` on machine 1 makes machine 0 save and stop; machine 0's container then exits 0 by itself
once its bounded wait for machine 1's launcher (which left on the signal) has passed.
Only what users see is asserted: log lines, exit codes and files on the host.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from entrypoint.checkpoints.validate import validate_file
from tests.container.conftest import (
    GRACE_PERIOD_S,
    RESUMED,
    TINY_TRAINING,
    BuildFacts,
    TrainService,
    UserProject,
    docker,
    new_user_project,
    prepare_dataset,
    wait_until,
)
from tests.machines import free_port_pair

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.trainer]

AGREE = "machines: all 2 machines agree"
STOPPED_BY_ANOTHER = re.compile(r"Stopped by a stop signal \(on another process\) at update (\d+)")
SINGLE = "compose.yaml:compose.cpu.yaml:compose.test.yaml"
MULTI = "compose.yaml:compose.cpu.yaml:compose.multinode.yaml:compose.test.yaml"
# 64 updates per epoch on the two machines (batches of 2): the run never ends by itself during the test.
CLIPS = 256
# Machine 0's launcher waits min(COLLECTIVE_TIMEOUT_S, 60 s) for the other machines' launchers.
COLLECTIVE_TIMEOUT_S = 30


@pytest.fixture
def machines(
    base_image: str, full_image: BuildFacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[UserProject, UserProject]]:
    """Machine 0's and machine 1's checkouts; both checkouts' `compose.yaml` say `name: f5tts`, so each
    .env names its own project, as two checkouts on one host need."""

    def machine(rank: int) -> UserProject:
        root = tmp_path_factory.mktemp(f"machine{rank}") / "f5tts"
        return new_user_project(
            root, base_image, COMPOSE_PROJECT_NAME=f"f5tts-machine{rank}", **TINY_TRAINING
        )

    pair = (machine(0), machine(1))
    yield pair
    for project in pair:
        project.compose("down", "--timeout", "10")


def exit_code(train: TrainService) -> int:
    return int(train.inspect()["State"]["ExitCode"])


# Run alone, this test is the first to ask for the image: cold, building it downloads the trainer stack.
@pytest.mark.timeout(3600)
def test_two_machines_resume_together_and_a_stop_on_machine_1_saves_on_machine_0(
    machines: tuple[UserProject, UserProject],
) -> None:
    began = time.monotonic()
    machine0, machine1 = machines
    train0, train1 = TrainService(machine0), TrainService(machine1)
    prepare_dataset(machine0, machine0.settings["TRAIN_IMAGE"], clips=CLIPS)
    # docs/proxmox.md: each machine its own copy of the prepared dataset (the fingerprints must match).
    subprocess.run(["cp", "-a", f"{machine0.dataset}/.", str(machine1.dataset)], check=True)

    # Machine 0 alone first: two updates, model_last.pt at update 2, exit 0 (no restart).
    machine0.write_env(COMPOSE_FILE=SINGLE, MAX_UPDATES="2")
    train0.up()
    docker("wait", train0.container(), timeout=300)
    assert exit_code(train0) == 0, train0.tail()
    assert train0.saved()[-1] == 2, train0.tail()
    alone = time.monotonic()

    port = free_port_pair()
    together = {
        "COMPOSE_FILE": MULTI,
        "NUM_MACHINES": "2",
        "MAIN_PROCESS_IP": "127.0.0.1",
        "MAIN_PROCESS_PORT": str(port),
        # TINY_TRAINING's 0 would not wait at all for the other machine's preflight.
        "WAIT_TIMEOUT_S": "180",
        "COLLECTIVE_TIMEOUT_S": str(COLLECTIVE_TIMEOUT_S),
        "ALLOW_SCRATCH": "false",
    }
    machine1.write_env(**together, MACHINE_RANK="1")
    machine0.write_env(**together, MACHINE_RANK="0")
    train1.up()
    train0.up()

    def both_resumed() -> bool:
        return bool(RESUMED.search(train0.logs()) and RESUMED.search(train1.logs()))

    def both_tails() -> str:
        return f"--- machine 0\n{train0.tail()}\n--- machine 1\n{train1.tail()}"

    wait_until(both_resumed, "a resume on both machines", 300, both_tails)
    logs0, logs1 = train0.logs(), train1.logs()
    assert AGREE in logs0 and AGREE in logs1, both_tails()
    resumed0, resumed1 = RESUMED.search(logs0), RESUMED.search(logs1)
    assert resumed0 is not None and resumed1 is not None
    # Machine 0 loaded its file; machine 1 received the same state: the same update and fingerprint.
    assert resumed0[1] == "/workspace/data/output/model_last.pt", both_tails()
    assert (int(resumed0[2]), resumed0[3]) == (2, resumed1[3]) and int(resumed1[2]) == 2, both_tails()
    # Training is under way on both machines once machine 0 saves past the loaded update.
    train0.wait_for_saves(1, timeout_s=240)
    resumed_together = time.monotonic()

    # `docker compose stop train` on machine 1: machine 0 saves the update both reached and stops.
    stopping = time.monotonic()
    done = machine1.compose("stop", "train", timeout=GRACE_PERIOD_S + 60)
    stop1_s = time.monotonic() - stopping
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: STOPPED_BY_ANOTHER.search(train0.logs()) is not None,
        "machine 0 stopping for machine 1",
        120,
        both_tails,
    )
    stopped = STOPPED_BY_ANOTHER.search(train0.logs())
    assert stopped is not None
    update = int(stopped[1])
    assert update > 2, both_tails()
    assert validate_file(machine0.output / "model_last.pt").update == update
    # Machine 1 never writes a checkpoint: its folders hold only its own lock and preflight records.
    written1 = [p for folder in (machine1.output, machine1.backups) for p in folder.rglob("*") if p.is_file()]
    assert [p.name for p in written1 if p.name.startswith("model_") or p.suffix == ".pt"] == []

    # Machine 1 stopped at the same update, on its SIGTERM.
    assert f"Stopped by SIGTERM at update {update}" in train1.logs(), train1.tail()

    # Machine 0's launcher waits for machine 1's launcher, which left on the signal, at most
    # COLLECTIVE_TIMEOUT_S (torchrun's own wait is 300 s), says so and the container exits 0 by itself.
    stopping = time.monotonic()
    docker("wait", train0.container(), timeout=COLLECTIVE_TIMEOUT_S + 90)
    stop0_s = time.monotonic() - stopping
    assert exit_code(train0) == 0, train0.tail()
    assert "not waiting for them any longer" in train0.logs(), train0.tail()
    assert validate_file(machine0.output / "model_last.pt").update == update
    print(
        f"\ntwo machines: alone to update 2 {alone - began:.0f} s, both resumed and saved"
        f" {resumed_together - alone:.0f} s, stop machine 1 {stop1_s:.1f} s (exit {exit_code(train1)}),"
        f" machine 0 ended by itself {stop0_s:.1f} s later (exit {exit_code(train0)}), stopped at update {update},"
        f" in all {time.monotonic() - began:.0f} s"
    )
