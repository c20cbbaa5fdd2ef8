"""Two machines on one host, for the tests: two `preflight run` processes on loopback (static rendezvous at
127.0.0.1), each with its own settings file."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.trainer_data import tiny_settings, training_command, write_settings


def free_port_pair() -> int:
    """A free port whose next port is free too: machine 0's rendezvous and, one above, the preflights'
    meeting."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65000:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two free ports in a row")


def node_settings(
    root: Path, dataset: Path, rank: int, port: int, **overrides: object
) -> tuple[dict[str, str], Path]:
    """The tiny preset as machine `rank` of two; (values, settings file)."""
    machine = {
        "num_machines": 2,
        "machine_rank": rank,
        "main_process_ip": "127.0.0.1",
        "main_process_port": port,
        "train_processes": 1,
        "mixed_precision": "no",
        "wait_timeout_s": 60,
        "collective_timeout_s": 30,
    }
    values = tiny_settings(dataset, root, **{**machine, **overrides})
    root.mkdir(parents=True, exist_ok=True)
    return values, write_settings(root, values)


def start_node(env_file: Path, log: Path) -> subprocess.Popen[str]:
    """`preflight run` for one machine: stdout piped, stderr into `log`, in a session of its own."""
    argv, env = training_command(env_file)
    stderr = open(log, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
    )


def finish_node(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out
