"""Two machines sharing one OUTPUT_DIR and one LOGS_DIR (as on NFS or CephFS): two `preflight run` processes
on loopback pointed at the same folders. Machine 1 notices the folder is machine 0's, confirms it sees the
same checkpoint, copies nothing, and keeps its lock, records and log under names of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entrypoint.ledger import ledger_path, read_ledger
from entrypoint.naming import LOCK_NAME, lock_name, log_file_name, state_dir
from tests.machines import finish_node, free_port_pair, node_settings, start_node
from tests.trainer_data import (
    RESUMED,
    fingerprint,
    load_checkpoint,
    run_training,
    tiny_settings,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]


def test_machines_sharing_one_output_dir_see_one_checkpoint_and_keep_their_own_records(
    dataset: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    first_values = tiny_settings(dataset, shared, max_updates=2, last_every_updates=2)
    first = run_training(write_settings(shared, first_values))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    output = Path(first_values["OUTPUT_DIR"])
    logs = Path(first_values["LOG_DIR"])
    saved = load_checkpoint(output / "model_last.pt")
    assert saved["update"] == 2

    port = free_port_pair()
    same_folders = {"output_dir": output, "log_dir": logs, "backup_dir": shared / "backups"}
    _, env0 = node_settings(tmp_path / "node0", dataset, 0, port, max_updates=4, **same_folders)
    _, env1 = node_settings(tmp_path / "node1", dataset, 1, port, max_updates=4, **same_folders)
    node1 = start_node(env1, tmp_path / "node1.err")
    node0 = start_node(env0, tmp_path / "node0.err")
    code0, out0 = finish_node(node0)
    code1, out1 = finish_node(node1)
    both = f"--- node 0\n{out0[-3000:]}\n--- node 1\n{out1[-3000:]}"
    assert (code0, code1) == (0, 0), both + (tmp_path / "node1.err").read_text()[-2000:]

    assert "machine(s) 1 share this OUTPUT_DIR" in out0, both
    assert "they see model_last.pt as machine 0 does" in out0, both
    assert "OUTPUT_DIR on machine 1 is the same folder as machine 0's" in out1, both
    assert "model_last.pt looks the same from both machines" in out1, both
    expected = fingerprint(saved["model_state_dict"])
    for out in (out0, out1):
        resumed = RESUMED.search(out)
        assert resumed and int(resumed.group(2)) == 2, both
        assert float(resumed.group(3)) == pytest.approx(expected, rel=1e-9)

    # One checkpoint, saved by machine 0; each machine its own lock, reports, ledger and log.
    assert load_checkpoint(output / "model_last.pt")["update"] == 4
    assert {LOCK_NAME, lock_name(1)} <= {p.name for p in output.iterdir()}
    assert not [p.name for p in output.iterdir() if p.name.startswith(".model_last.pt.partial-")]
    machine0, machine1 = state_dir(output, 0), state_dir(output, 1)
    assert json.loads((machine1 / "report.json").read_text())["status"] != "fail"
    runs0, runs1 = read_ledger(ledger_path(machine0)), read_ledger(ledger_path(machine1))
    assert len(runs0) == 2 and len(runs1) == 1
    # Each machine's first process recorded how its start ended, in its own ledger.
    assert runs0[-1].exit_code == 0 and runs1[-1].exit_code == 0, (runs0, runs1)
    log0 = (logs / log_file_name(0)).read_text(errors="replace")
    log1 = (logs / log_file_name(1)).read_text(errors="replace")
    assert "machine(s) 1 share this OUTPUT_DIR" in log0 and "machine(s) 1 share" not in log1
    assert "OUTPUT_DIR on machine 1 is the same folder" in log1
