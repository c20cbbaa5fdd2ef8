"""Two machines as two `preflight run` processes on loopback, each with its own OUTPUT_DIR, training the tiny
preset together over Gloo with Accelerate's multi-machine launch (static rendezvous)."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from entrypoint.checkpoints.validate import validate_file
from entrypoint.errors import EXIT_CHECK_FAILED
from entrypoint.naming import lock_name
from tests.machines import finish_node, free_port_pair, node_settings, start_node
from tests.trainer_data import (
    RESUMED,
    SAVED_LAST,
    fingerprint,
    load_checkpoint,
    run_training,
    tiny_settings,
    wait_for_line,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]
STOPPED_BY_ANOTHER = re.compile(r"Stopped by a stop signal \(on another process\) at update (\d+)")
# The trainer's own end, then the launcher's line: what a user reads last when another machine is lost.
LAUNCHER_LINE = "error: the trainer process of global rank {rank} exited with code 3;"
# torchrun's agent hosts nothing machine 0 needs after its trainer ended; what is left is the interpreter's exit
# on a busy 2-core machine.
EXIT_MARGIN_S = 30


def _signal_machine(process: subprocess.Popen[str], signum: int) -> int:
    """`signum` to every process of one machine: the launcher and the log copier, and the trainers and their
    DataLoader workers, which torchrun and the trainer start in sessions of their own (a signal to the
    launcher's process group misses them). Listed again until no new process shows up: a stopped process
    cannot start another. Returns how many were signalled."""
    import psutil

    done: set[int] = set()
    for _ in range(10):
        try:
            root = psutil.Process(process.pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        fresh = [member for member in members if member.pid not in done]
        if not fresh:
            break
        for member in fresh:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signum)
            done.add(member.pid)
    return len(done)


def _text(seen: list[str], out: str, err: Path) -> str:
    return "".join(seen) + out + err.read_text(errors="replace")


def _last_line(err: Path) -> str:
    lines = [line.strip() for line in err.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_both_machines_resume_from_machine_0s_checkpoint(dataset: Path, tmp_path: Path) -> None:
    # Machine 0 trained alone to update 2 before; machine 1 holds only a damaged model_last.pt.
    first_values = tiny_settings(dataset, tmp_path / "node0", max_updates=2, last_every_updates=2)
    first = run_training(write_settings(tmp_path / "node0", first_values))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    saved = load_checkpoint(Path(first_values["OUTPUT_DIR"]) / "model_last.pt")
    assert saved["update"] == 2

    port = free_port_pair()
    values0, env0 = node_settings(tmp_path / "node0", dataset, 0, port, max_updates=4, allow_scratch="false")
    values1, env1 = node_settings(tmp_path / "node1", dataset, 1, port, max_updates=4, allow_scratch="false")
    output1 = Path(values1["OUTPUT_DIR"])
    output1.mkdir(parents=True)
    damaged = output1 / "model_last.pt"
    damaged.write_bytes(b"PK\x03\x04 not a whole checkpoint" * 10)

    node1 = start_node(env1, tmp_path / "node1.err")
    node0 = start_node(env0, tmp_path / "node0.err")
    code0, out0 = finish_node(node0)
    code1, out1 = finish_node(node1)
    both = f"--- node 0\n{out0[-3000:]}\n--- node 1\n{out1[-3000:]}"
    assert (code0, code1) == (0, 0), both + (tmp_path / "node0.err").read_text()[-2000:]
    assert "all 2 machines agree" in out0 and "all 2 machines agree" in out1, both

    expected = fingerprint(saved["model_state_dict"])
    for out in (out0, out1):
        resumed = RESUMED.search(out)
        assert resumed, both
        assert int(resumed.group(2)) == 2
        assert float(resumed.group(3)) == pytest.approx(expected, rel=1e-9)
    # Machine 1 neither quarantined its damaged file nor saved anything; machine 0 saved update 4.
    assert sorted(p.name for p in output1.iterdir() if p.is_file()) == [lock_name(1), "model_last.pt"]
    assert "OUTPUT_DIR on machine 1 is its own" in out1, both
    assert "every other machine has its own OUTPUT_DIR" in out0, both
    assert damaged.read_bytes().startswith(b"PK\x03\x04 not a whole")
    assert load_checkpoint(Path(values0["OUTPUT_DIR"]) / "model_last.pt")["update"] == 4


def test_a_different_vocabulary_stops_both_machines(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-dataset"
    shutil.copytree(dataset, other)
    with open(other / "vocab.txt", "a", encoding="utf-8") as vocab:
        vocab.write("\u00e6\n")
    port = free_port_pair()
    _, env0 = node_settings(tmp_path / "node0", dataset, 0, port)
    _, env1 = node_settings(tmp_path / "node1", other, 1, port)
    node0 = start_node(env0, tmp_path / "node0.err")
    node1 = start_node(env1, tmp_path / "node1.err")
    code0, out0 = finish_node(node0, 120)
    code1, out1 = finish_node(node1, 120)
    for code, out, err in ((code0, out0, "node0.err"), (code1, out1, "node1.err")):
        text = out + (tmp_path / err).read_text()
        assert code == 3, text[-3000:]
        assert "machine 1 differs from machine 0: vocabulary is" in text, text[-3000:]
        assert "Traceback" not in text


def test_an_unreachable_machine_0_is_one_line_with_its_address(dataset: Path, tmp_path: Path) -> None:
    port = free_port_pair()
    _, env1 = node_settings(tmp_path / "node1", dataset, 1, port, wait_timeout_s=2)
    started = time.monotonic()
    code, out = finish_node(start_node(env1, tmp_path / "node1.err"), 60)
    text = out + (tmp_path / "node1.err").read_text()
    assert code == 3, text[-3000:]
    assert f"127.0.0.1:{port + 1} could not be reached within 2 s" in text
    assert "firewall" in text and "Traceback" not in text
    assert time.monotonic() - started < 30


def test_sigterm_on_machine_1_saves_on_machine_0_and_a_dead_machine_stops_the_other(
    dataset: Path, tmp_path: Path
) -> None:
    timeout = 15  # COLLECTIVE_TIMEOUT_S, and so machine 0's exit wait (modes.exit_wait_s)
    many = {"max_updates": 100000, "last_every_updates": 2, "epochs": 100000, "collective_timeout_s": timeout}
    port = free_port_pair()
    values0, env0 = node_settings(tmp_path / "node0", dataset, 0, port, **many)
    values1, env1 = node_settings(tmp_path / "node1", dataset, 1, port, **many)
    node0 = start_node(env0, tmp_path / "node0.err")
    node1 = start_node(env1, tmp_path / "node1.err")
    seen0: list[str] = []
    wait_for_line(node0, SAVED_LAST, seen0)  # training is under way on both machines
    signalled = time.monotonic()
    node1.send_signal(signal.SIGTERM)  # what `docker stop` does to machine 1's container
    stopped = wait_for_line(node0, STOPPED_BY_ANOTHER, seen0)
    update = int(stopped.group(1))
    assert load_checkpoint(Path(values0["OUTPUT_DIR"]) / "model_last.pt")["update"] == update
    assert node1.wait(60) != 0  # torchrun's agent re-raises the signal it stopped for
    assert not (Path(values1["OUTPUT_DIR"]) / "model_last.pt").exists()
    # Machine 0's trainer has ended with its save; its launcher waits for machine 1's launcher, which left on
    # the signal, only COLLECTIVE_TIMEOUT_S (torch's own exit barrier: 300 s), then exits 0 by itself.
    code0, out0 = finish_node(node0, timeout + EXIT_MARGIN_S + 60)
    took = time.monotonic() - signalled
    text = _text(seen0, out0, tmp_path / "node0.err")
    assert code0 == 0, text[-3000:]
    assert took < timeout + EXIT_MARGIN_S, (took, text[-3000:])
    assert f"did not all end within {timeout} s" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    print(f"\nmachine 1 SIGTERM -> machine 0's launcher exit 0: {took:.1f} s")

    # Both started again: they resume from machine 0's save; then machine 1 dies (every process of it killed),
    # and machine 0 stops with one line instead of waiting.
    port = free_port_pair()
    _, env0 = node_settings(tmp_path / "node0", dataset, 0, port, **many)
    _, env1 = node_settings(tmp_path / "node1", dataset, 1, port, **many)
    node0 = start_node(env0, tmp_path / "node0b.err")
    node1 = start_node(env1, tmp_path / "node1b.err")
    seen0 = []
    resumed = wait_for_line(node0, RESUMED, seen0)
    assert int(resumed.group(2)) == update
    wait_for_line(node0, SAVED_LAST, seen0)
    killed = time.monotonic()
    assert _signal_machine(node1, signal.SIGKILL) >= 3  # launcher, copier, trainer (and its worker)
    code0, out0 = finish_node(node0, 120)
    node1.wait()
    text = _text(seen0, out0, tmp_path / "node0b.err")
    assert code0 == EXIT_CHECK_FAILED, text[-3000:]
    assert time.monotonic() - killed < timeout + EXIT_MARGIN_S
    assert "lost another machine of the 2 (machine 0 here)" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_a_hung_machine_1_stops_machine_0_within_the_collective_timeout_and_itself_once_it_runs_again(
    dataset: Path, tmp_path: Path
) -> None:
    """Machine 1 hangs (every process of it stopped: a frozen VM, not a dead one: its connections stay open),
    so only the collective timeout can tell machine 0. Machine 0 stops by itself with one line and exit 3,
    its model_last.pt intact; machine 1, running again later, finds its peer gone and stops too."""
    timeout = 15
    many = {"max_updates": 100000, "last_every_updates": 2, "epochs": 100000, "collective_timeout_s": timeout}
    port = free_port_pair()
    values0, env0 = node_settings(tmp_path / "node0", dataset, 0, port, **many)
    _, env1 = node_settings(tmp_path / "node1", dataset, 1, port, **many)
    node0 = start_node(env0, tmp_path / "node0.err")
    node1 = start_node(env1, tmp_path / "node1.err")
    seen0: list[str] = []
    wait_for_line(node0, SAVED_LAST, seen0)
    try:
        assert _signal_machine(node1, signal.SIGSTOP) >= 3
        frozen = time.monotonic()
        code0, out0 = finish_node(node0, timeout + EXIT_MARGIN_S + 60)
        took0 = time.monotonic() - frozen
    finally:
        _signal_machine(node1, signal.SIGCONT)
    running = time.monotonic()
    code1, out1 = finish_node(node1, 120)
    took1 = time.monotonic() - running
    print(
        f"\nSIGSTOP -> machine 0 exit {code0}: {took0:.1f} s; SIGCONT -> machine 1 exit {code1}: {took1:.1f} s"
    )

    text0 = _text(seen0, out0, tmp_path / "node0.err")
    assert code0 == EXIT_CHECK_FAILED, text0[-3000:]
    assert timeout - 1 < took0 < timeout + EXIT_MARGIN_S, (took0, text0[-3000:])
    assert (
        f"error: lost another machine of the 2 (machine 0 here): no answer within COLLECTIVE_TIMEOUT_S={timeout} s"
        in text0
    ), text0[-3000:]
    assert "Traceback" not in text0, text0[-3000:]
    assert _last_line(tmp_path / "node0.err").startswith(LAUNCHER_LINE.format(rank=0)), text0[-3000:]
    # Its newest save is whole and holds the update it announced last.
    saved = [int(match.group(1)) for match in SAVED_LAST.finditer(text0)]
    last = Path(values0["OUTPUT_DIR"]) / "model_last.pt"
    assert validate_file(last, deep=True).valid
    assert load_checkpoint(last)["update"] == saved[-1]

    text1 = out1 + (tmp_path / "node1.err").read_text(errors="replace")
    assert code1 == EXIT_CHECK_FAILED, text1[-3000:]
    assert took1 < EXIT_MARGIN_S, (took1, text1[-3000:])
    assert "error: lost another machine of the 2 (machine 1 here)" in text1, text1[-3000:]
    assert "Traceback" not in text1, text1[-3000:]
    assert _last_line(tmp_path / "node1.err").startswith(LAUNCHER_LINE.format(rank=1)), text1[-3000:]
