"""A launcher's stop sent to the trainer's whole process group at the moment the data loader forks a worker
(F5-TTS makes new workers at an epoch's start after a resume): the worker must not die of it, the trainer
must still see the stop.

The moment is made exact, not hoped for: the new worker is held, after torch installed its signal handlers
and before it can leave the process group, until the parent has sent SIGTERM to the group. Real torch DataLoader, real fork, real signal.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("f5_tts")

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from torch.utils.data import DataLoader
    from entrypoint.train.graceful import install_stop_handlers, shield_workers
    from entrypoint.train.safe_trainer import StoppableLoader

    from torch.utils.data._utils import signal_handling

    stop = install_stop_handlers()
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    torch_handlers = signal_handling._set_worker_signal_handlers

    def hold_the_worker():
        # In the new worker, once torch has installed its SIGTERM handler (which kills a worker on a
        # SIGTERM that does not come from its parent) and before the worker leaves the process group.
        torch_handlers()
        os.write(ready_write, b"r")
        os.read(go_read, 1)

    def stop_the_group():  # in the trainer, right after the fork: what torchrun does on `docker stop`
        os.read(ready_read, 1)
        os.killpg(0, signal.SIGTERM)
        os.write(go_write, b"g")

    signal_handling._set_worker_signal_handlers = hold_the_worker
    os.register_at_fork(after_in_parent=stop_the_group)

    class Trainer:
        class checkpoints:
            @staticmethod
            def wait():
                return []
        class accelerator:
            sync_gradients = True
        update_count = 0
        def check_stop(self):
            pass
        def common_batch_count(self, loader):
            return None
        def after_update(self, batch):
            pass

    loader = DataLoader(list(range(8)), batch_size=2, num_workers=1)
    if sys.argv[1] == "accelerate":  # what F5-TTS iterates: Accelerate's adapter around a DataLoader
        from accelerate import Accelerator

        loader = Accelerator(cpu=True).prepare(loader)
    shield_workers(loader)
    batches = list(StoppableLoader(loader, Trainer()))
    print("batches", len(batches), "stop", stop.signal_name, flush=True)
    """
)


@pytest.mark.parametrize("loader", ["torch", "accelerate"])
def test_a_stop_sent_while_a_worker_is_forked_stops_the_trainer_not_the_worker(loader: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, loader],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,  # its own process group: the SIGTERM to the group reaches nothing else
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "killed by signal" not in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "batches 4 stop SIGTERM"
