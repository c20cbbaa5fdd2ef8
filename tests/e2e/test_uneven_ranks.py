"""Two real processes (gloo on the CPU) with different batch counts, as F5-TTS's frame batching gives them
(even_batches off): the stoppable loader must end every rank's epoch at the same count, or the per-batch stop
all-reduce on the longer rank meets a different collective on the other one."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from entrypoint.train.safe_trainer import StoppableLoader

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")


class _Checkpoints:
    def wait(self) -> list[Any]:
        return []


class _Accelerator:
    sync_gradients = True


class _RankTrainer:
    """The parts of SafeTrainer the loader uses, with SafeTrainer's collectives, on a real process group."""

    def __init__(self) -> None:
        self.checkpoints = _Checkpoints()
        self.accelerator = _Accelerator()
        self.update_count = 0

    def after_update(self, batch: Any) -> None:
        """SafeTrainer's heartbeat and non-finite guard: nothing to do for these integer batches."""

    def check_stop(self) -> None:
        dist.all_reduce(torch.zeros(1), op=dist.ReduceOp.MAX)  # the per-batch stop agreement

    def common_batch_count(self, loader: Any) -> int:
        count = torch.tensor([len(loader)])
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        return int(count.item())


def _rank_main(rank: int, port: int, results: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = _RankTrainer()
        batches = list(range(4 if rank == 0 else 3))  # an odd total: rank 0 has one more
        seen = list(StoppableLoader(batches, trainer))
        # Whatever collective comes next (here: an end marker) must pair with the same call on the other rank.
        marker = torch.tensor([float(rank + 1) * 100.0])
        dist.all_reduce(marker)
        (results / f"rank{rank}").write_text(f"{len(seen)} {trainer.update_count} {marker.item()}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ranks_with_uneven_batch_counts_stop_at_the_same_count(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_rank_main, args=(_free_port(), tmp_path), nprocs=2, join=True)
    for rank in (0, 1):
        batches, updates, marker = (tmp_path / f"rank{rank}").read_text().split()
        assert (int(batches), int(updates)) == (3, 3)  # rank 0's extra batch is dropped
        assert float(marker) == 300.0  # the end markers met each other, not a stop all-reduce
