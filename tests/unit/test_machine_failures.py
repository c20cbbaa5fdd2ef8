"""What a machine says and returns when another machine of the training is lost (torch-free)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from entrypoint.modes import EXIT_WAIT_MAX_S, exit_wait_s
from entrypoint.settings import load_settings
from entrypoint.train.distributed import describe_peer_failure, is_peer_failure
from entrypoint.train.launcher import exit_wait_line, failure_code, failure_line
from entrypoint.train.watchdog import Stall, stall_line

TWO = {"NUM_MACHINES": "2", "MACHINE_RANK": "0", "MAIN_PROCESS_IP": "10.0.0.1"}
# Messages of real Gloo errors, as torch 2.9 raises them (RuntimeError) when the other machine is gone.
TIMED_OUT = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 15000ms for recv "
    "operation to complete"
)
CLOSED = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:33680"
)
PAIR_CLOSED_AFTER_TIMEOUT = "Application timeout caused pair closure"


@pytest.mark.parametrize("message", [TIMED_OUT, CLOSED, PAIR_CLOSED_AFTER_TIMEOUT])
def test_gloo_errors_of_a_lost_machine_are_peer_failures(message: str) -> None:
    assert is_peer_failure(RuntimeError(message))


def test_other_errors_are_not_peer_failures() -> None:
    assert not is_peer_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_peer_failure(ValueError("a timeout of the DataLoader"))


def test_a_machine_that_stopped_answering_is_named_by_the_collective_timeout() -> None:
    what, timed_out = describe_peer_failure(RuntimeError(TIMED_OUT), 15)
    assert timed_out
    assert (
        what
        == "no answer within COLLECTIVE_TIMEOUT_S=15 s (Timed out waiting 15000ms for recv operation to complete)"
    )
    what, timed_out = describe_peer_failure(RuntimeError(CLOSED), 15)
    assert (what, timed_out) == ("Connection closed by peer [127.0.0.1]:33680", False)
    assert describe_peer_failure(RuntimeError(PAIR_CLOSED_AFTER_TIMEOUT), 300)[1]


def test_the_exit_wait_is_the_collective_timeout_up_to_a_minute() -> None:
    assert exit_wait_s(load_settings({**TWO, "COLLECTIVE_TIMEOUT_S": "15"}).settings) == 15
    assert exit_wait_s(load_settings(TWO).settings) == EXIT_WAIT_MAX_S == 60
    assert "within 15 s" in exit_wait_line(15)


def test_the_launcher_exits_with_the_trainers_code_and_a_signal_as_128_plus_it() -> None:
    assert failure_code(3) == 3 and failure_code(7) == 7
    assert failure_code(-9) == 137 and failure_code(0) == 1
    assert failure_line(1, 3, 3).startswith("error: the trainer process of global rank 1 exited with code 3")
    assert "was killed by SIGKILL" in failure_line(0, -9, 137)
    assert "another machine may have stopped answering" in failure_line(0, -6, 134)  # NCCL's timeout


def test_a_stall_over_several_machines_names_a_lost_machine_as_a_cause() -> None:
    stall = Stall(
        update=4, phase="train", silent_s=11.2, timeout_s=10, reason="no update completed", machines=2
    )
    line = stall_line(stall)
    assert (
        "STALL: no update completed for 11 s (timeout 10 s) in phase train, after update 4 (one of 2 machines:"
        in line
    )
    assert "Exiting with 7" in line
    assert "machines" not in stall_line(replace(stall, machines=1))
