"""Several machines in the plan: settings, the launch command, the environment, the estimate, the comparison."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from entrypoint.cluster import first_difference
from entrypoint.errors import ConfigError
from entrypoint.handoff import Handoff, TrainingOptions, parse_handoff
from entrypoint.machines import apply_machine_environment, communication_seconds
from entrypoint.modes import SafeMode
from entrypoint.settings import load_settings

TWO = {"NUM_MACHINES": "2", "MACHINE_RANK": "1", "MAIN_PROCESS_IP": "10.0.0.1", "MAIN_PROCESS_PORT": "29600"}


def test_one_machine_keeps_the_single_machine_command() -> None:
    settings = load_settings({}).settings
    assert "--machine_rank" not in SafeMode().argv(settings, 2)
    assert SafeMode().argv(settings, 1)[1:] == ["-m", "entrypoint.train"]


def test_two_machines_launch_with_a_static_rendezvous() -> None:
    argv = SafeMode().argv(load_settings({**TWO, "COLLECTIVE_TIMEOUT_S": "20"}).settings, 1)
    joined = " ".join(argv)
    # Accelerate's launch, through the launcher that bounds torchrun's exit barrier and keeps exit codes.
    assert argv[:7] == [
        sys.executable, "-m", "entrypoint.train.launcher", "--exit-wait-s", "20", "--stop-wait-s", "170"
    ]  # fmt: skip
    assert "--multi_gpu --num_processes 2 --num_machines 2" in joined  # total processes over both machines
    assert "--machine_rank 1 --main_process_ip 10.0.0.1 --main_process_port 29600" in joined
    assert "--rdzv_backend static --max_restarts 0" in joined
    assert argv[-2:] == ["-m", "entrypoint.train"]


def test_the_launch_options_are_accelerates_own() -> None:
    launch = pytest.importorskip("accelerate.commands.launch")
    argv = SafeMode().argv(load_settings(TWO).settings, 2)
    parsed = launch.launch_command_parser().parse_args(argv[7:])
    assert parsed.multi_gpu and parsed.num_processes == 4 and parsed.num_machines == 2
    assert (parsed.machine_rank, parsed.main_process_ip, parsed.main_process_port) == (1, "10.0.0.1", 29600)
    assert (parsed.rdzv_backend, parsed.max_restarts, parsed.module) == ("static", 0, True)
    assert parsed.training_script == "entrypoint.train"


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"NUM_MACHINES": "2", "MACHINE_RANK": "2", "MAIN_PROCESS_IP": "h"}, "expected 0 to 1"),
        ({"NUM_MACHINES": "2"}, "needs MAIN_PROCESS_IP"),
        ({**TWO, "TRAINER_MODE": "stock"}, "TRAINER_MODE=stock cannot train on several machines"),
        ({"MACHINE_RANK": "1"}, "MACHINE_RANK=1 is not allowed with NUM_MACHINES=1"),
    ],
)
def test_machine_settings_that_cannot_work_are_refused(values: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(values)


def test_network_environment_turns_infiniband_off_and_keeps_the_users_choice() -> None:
    settings = load_settings(TWO).settings
    env = {"NCCL_SOCKET_IFNAME": "", "GLOO_SOCKET_IFNAME": "ens19"}
    apply_machine_environment(env, settings)
    assert env["NCCL_IB_DISABLE"] == "1" and "NCCL_SOCKET_IFNAME" not in env
    assert env["GLOO_SOCKET_IFNAME"] == "ens19"
    asked = {"NCCL_IB_DISABLE": "0"}
    apply_machine_environment(asked, settings)
    assert asked["NCCL_IB_DISABLE"] == "0"
    alone: dict[str, str] = {}
    apply_machine_environment(alone, load_settings({}).settings)
    assert alone == {}


def test_communication_estimate_is_the_ring_all_reduce_of_fp32_gradients() -> None:
    # 336M parameters, 2 machines: 1.344 GB sent per machine per update; at 10 Gbit/s: 1.0752 s.
    assert communication_seconds(336e6, 2, 10) == pytest.approx(1.0752)
    assert communication_seconds(336e6, 1, 10) == 0.0


def test_the_first_difference_names_the_machine_and_both_values() -> None:
    ours = {"version of torch": "2.9.1", "MODEL_PRESET": "tiny"}
    assert first_difference(1, dict(ours), ours) is None
    line = first_difference(1, {"version of torch": "2.9.0", "MODEL_PRESET": "tiny"}, ours)
    assert line == "machine 1 differs from machine 0: version of torch is 2.9.0 there, 2.9.1 on machine 0"


def _handoff(tmp_path: Path, **machines: Any) -> Handoff:
    settings = load_settings({"OUTPUT_DIR": str(tmp_path / "out")}).settings
    return Handoff(
        checkpoint=None,
        checkpoint_kind="scratch",
        checkpoint_update=0,
        workers=1,
        torch_threads=1,
        processes=1,
        mixed_precision="no",
        output_dir=settings.output_dir,
        backup_dir=settings.backup_dir,
        dataset_dir=settings.dataset_dir,
        log_dir=settings.log_dir,
        vocab_file=settings.vocab_path,
        report=tmp_path / "report.json",
        training=TrainingOptions.from_settings(settings),
        preflight_version="test",
        **machines,
    )


def test_the_handoff_carries_the_machine_rank_and_count(tmp_path: Path) -> None:
    handoff = _handoff(tmp_path, machine_rank=1, num_machines=2, collective_timeout_s=30.0)
    assert parse_handoff(handoff.to_json()) == handoff
    older = handoff.to_json()
    for key in ("machine_rank", "num_machines", "collective_timeout_s"):
        del older[key]
    assert parse_handoff(older).num_machines == 1  # a document from before several machines: one machine
    wrong = {**handoff.to_json(), "machine_rank": 2}
    with pytest.raises(ConfigError, match="machine_rank must be below num_machines"):
        parse_handoff(wrong)


def test_a_machine_other_than_0_plans_no_checkpoint_action(tmp_path: Path) -> None:
    from entrypoint.commands.common import make_plan

    output = tmp_path / "out"
    output.mkdir()
    (output / "model_last.pt").write_bytes(b"damaged")  # machine 0 would quarantine this
    values = {**TWO, "OUTPUT_DIR": str(output), "DATASET_DIR": str(tmp_path), "ALLOW_SCRATCH": "false"}
    plan = make_plan(load_settings(values), environ=values)
    assert not [a for a in plan.actions if a.kind in ("quarantine", "move-aside")]
    assert plan.checkpoint.message.startswith("chosen by machine 0")
    assert plan.handoff is None or plan.handoff.machine_rank == 1
