"""The multi-machine launcher (entrypoint.train.launcher) with the pinned torch and Accelerate: two real launchers
on loopback (static rendezvous, as `preflight run` starts them), each running a tiny worker script instead of
the trainer, so the launcher's own behaviour is measured in seconds.

torch hard-codes the 300 s exit barrier where `launch_agent` builds its agent; the launcher replaces that agent
class. A torch that builds its agent another way, renames the option or stops honouring it makes the first
test fail (machine 0 would wait 300 s), instead of a container that lingers in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from entrypoint.modes import EXIT_WAIT_OPTION, MACHINES_LAUNCHER_MODULE, STOP_WAIT_OPTION
from tests.machines import free_port_pair

pytest.importorskip("accelerate")
pytest.importorskip("torch")
pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]
EXIT_WAIT_S = 4
# Starting torch and Accelerate on a busy 2-core machine takes most of this; the bound itself is EXIT_WAIT_S.
MARGIN_S = 60

WORKER = """\
import os, sys
rank = int(os.environ["RANK"])
print(f"worker {rank} done", flush=True)
sys.exit(int(os.environ.get(f"EXIT_OF_RANK_{rank}", "0")))
"""


def _launch(worker: Path, rank: int, port: int, exits: dict[int, int]) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-m", MACHINES_LAUNCHER_MODULE, EXIT_WAIT_OPTION, str(EXIT_WAIT_S),
        "--multi_gpu", "--num_processes", "2", "--num_machines", "2",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--rdzv_backend", "static", "--max_restarts", "0",
        str(worker),
    ]  # fmt: skip
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("EXIT_OF_")},
        "PYTHONPATH": str(REPO),
        **{f"EXIT_OF_RANK_{r}": str(code) for r, code in exits.items()},
    }
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _two_machines(tmp_path: Path, exits: dict[int, int]) -> list[tuple[int, str, float]]:
    """(exit code, output, seconds from the start of both) of machine 0 and machine 1."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER, encoding="utf-8")
    port = free_port_pair()
    started = time.monotonic()
    machines = [_launch(worker, rank, port, exits) for rank in (0, 1)]
    ended: dict[int, tuple[int, str, float]] = {}

    def finish(rank: int) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # torch's own barrier: 300 s
            out, _ = machines[rank].communicate(timeout=EXIT_WAIT_S + MARGIN_S)
            ended[rank] = (machines[rank].returncode, out, time.monotonic() - started)

    waiters = [threading.Thread(target=finish, args=(rank,)) for rank in (0, 1)]
    try:
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
    finally:
        for machine in machines:
            machine.kill()
            machine.wait()
    late = sorted({0, 1} - set(ended))
    assert not late, f"the launcher of machine {late} did not end within {EXIT_WAIT_S + MARGIN_S} s"
    return [ended[0], ended[1]]


def test_machine_0_waits_for_a_failed_machine_at_most_the_exit_wait_and_each_exits_with_its_trainers_code(
    tmp_path: Path,
) -> None:
    (code0, out0, took0), (code1, out1, took1) = _two_machines(tmp_path, {1: 3})
    # Machine 1: its trainer's exit code (3, not torchrun's 1), in one line instead of a traceback.
    assert code1 == 3, out1
    assert "error: the trainer process of global rank 1 exited with code 3" in out1
    assert "Traceback" not in out1 and "ChildFailedError" not in out1
    # Machine 0: its trainer succeeded; it waits for machine 1's launcher, which failed and never comes, for
    # EXIT_WAIT_S instead of torch's 300 s, says so in one line and exits 0.
    assert code0 == 0, out0
    assert "worker 0 done" in out0
    assert f"did not all end within {EXIT_WAIT_S} s" in out0, out0
    assert "Traceback" not in out0, out0
    assert took0 - took1 >= EXIT_WAIT_S - 1  # it did wait (the barrier is still there, only bounded)
    assert took0 < EXIT_WAIT_S + MARGIN_S, (took0, out0)


def test_when_every_trainer_succeeds_no_machine_waits_out_the_bound(tmp_path: Path) -> None:
    ended = _two_machines(tmp_path, {})
    for code, out, _ in ended:
        assert code == 0, out
        assert "did not all end" not in out and "Traceback" not in out, out
    assert abs(ended[0][2] - ended[1][2]) < EXIT_WAIT_S


STUBBORN_WORKER = """\
import os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a final save that outlasts any grace
print(f"worker {os.environ['RANK']} pid {os.getpid()} ready", flush=True)
while True:
    signal.pause()
"""
STOP_WAIT_S = 3


def test_after_a_stop_signal_the_trainers_get_the_stop_wait_not_torchs_30_s(tmp_path: Path) -> None:
    worker = tmp_path / "stubborn.py"
    worker.write_text(STUBBORN_WORKER, encoding="utf-8")
    argv = [
        sys.executable, "-m", MACHINES_LAUNCHER_MODULE, EXIT_WAIT_OPTION, "5", STOP_WAIT_OPTION, str(STOP_WAIT_S),
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(worker),
    ]  # fmt: skip
    launcher = subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert launcher.stdout is not None
        pids = []
        for line in launcher.stdout:
            if line.startswith("worker ") and line.rstrip().endswith(" ready"):
                pids.append(int(line.split()[3]))
                if len(pids) == 2:
                    break
        assert len(pids) == 2, "the workers never started"
        signalled = time.monotonic()
        launcher.send_signal(signal.SIGTERM)  # `docker stop`
        launcher.communicate(timeout=STOP_WAIT_S + MARGIN_S)
        took = time.monotonic() - signalled
    finally:
        launcher.kill()
        launcher.wait()
    # It waited for the trainers (their save), then ended them: well before torch's own 30 s.
    assert STOP_WAIT_S - 0.5 <= took < 25, took
    for pid in pids:
        assert not _alive(pid), f"worker {pid} outlived its launcher"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
