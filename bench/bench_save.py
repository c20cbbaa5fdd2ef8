"""Crash-safe checkpoint save vs a plain torch.save of the same state (what F5-TTS does).

The safe save is the trainer's path: disk-space guard, torch.save into a temp file in the same folder with
writeback started while writing, then (on the commit thread) fsync, zip end-record check, rename, folder
fsync and quick validation. Two figures: the time training is blocked (`CheckpointWriter.start` returns once the
state is serialized) and the time until the file is durable under its final name (`wait`). The baseline is
torch.save straight onto the final name with no fsync: it returns while the data is still in the page
cache, the fastest a save can be; "plain + fsync" is shown for the durable figure. The state has F5-TTS's
keys (model, EMA, two AdamW moments, scheduler, update) with random fp32 tensors; rounds alternate and
`sync` runs between them so one round's writeback does not slow the next.
Target: median blocking time <= 1.15x the plain save.

Run: python -m bench.bench_save [--size-gb 1.0] [--repeat 3] [--dir bench/out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.15
CHUNK_ELEMENTS = 16 << 20  # 64 MB fp32 tensors, like the larger F5TTS_Base weights


def make_state(size_gb: float) -> dict[str, object]:
    import torch

    per_part = int(size_gb * 1e9 / 4 / 4)  # model, EMA, exp_avg, exp_avg_sq

    def tensors(prefix: str) -> dict[str, object]:
        out, left, index = {}, per_part, 0
        while left > 0:
            count = min(CHUNK_ELEMENTS, left)
            out[f"{prefix}{index}.weight"] = torch.randn(count)
            left -= count
            index += 1
        return out

    model = tensors("transformer.blocks.")
    exp_avg, exp_avg_sq = tensors("m"), tensors("v")
    return {
        "model_state_dict": model,
        "optimizer_state_dict": {
            "state": {
                i: {"step": torch.tensor(1.0), "exp_avg": a, "exp_avg_sq": b}
                for i, (a, b) in enumerate(zip(exp_avg.values(), exp_avg_sq.values(), strict=True))
            },
            "param_groups": [{"lr": 1e-5, "params": list(range(len(exp_avg)))}],
        },
        "ema_model_state_dict": {"initted": torch.tensor(True), "step": torch.tensor(1)}
        | {f"ema_model.{k}": v for k, v in tensors("transformer.blocks.").items()},
        "scheduler_state_dict": {"last_epoch": 1},
        "update": 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()

    import torch

    from entrypoint.train.checkpoint_manager import CheckpointWriter

    args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-save-", dir=args.dir))
    state = make_state(args.size_gb)
    saver = CheckpointWriter(folder, log=print)
    plain, safe, fsync_after, durable = [], [], [], []
    try:
        torch.save(state, folder / "warmup.pt")  # first-touch costs of the allocator and page cache
        (folder / "warmup.pt").unlink()
        for round_number in range(args.repeat):
            # Alternate which one goes first so neither always inherits the other's disk activity.
            order = (_plain_round, _safe_round) if round_number % 2 == 0 else (_safe_round, _plain_round)
            for measure in order:
                os.sync()
                measure(
                    state,
                    folder,
                    saver,
                    plain if measure is _plain_round else safe,
                    fsync_after if measure is _plain_round else durable,
                )
            size = saver.last_size
    finally:
        saver.close()
        shutil.rmtree(folder, ignore_errors=True)
    # Per-round ratios cancel the machine's drift between rounds; the best rounds show the cost without noise.
    ratio = statistics.median(s / p for s, p in zip(safe, plain, strict=True))
    best_ratio = min(safe) / min(plain)
    print(f"state: {size / 1e9:.2f} GB in {folder.parent}")
    print(f"plain torch.save (no fsync):         median {statistics.median(plain):.3f} s  {_runs(plain)}")
    print(f"safe save, training blocked:         median {statistics.median(safe):.3f} s  {_runs(safe)}")
    print(
        f"plain torch.save + fsync (durable):  median {statistics.median(fsync_after):.3f} s  {_runs(fsync_after)}"
    )
    print(f"safe save until durable + validated: median {statistics.median(durable):.3f} s  {_runs(durable)}")
    print(f"durable: safe / plain+fsync = {statistics.median(durable) / statistics.median(fsync_after):.2f}x")
    print(f"best rounds: safe {min(safe):.3f} s / plain {min(plain):.3f} s = {best_ratio:.2f}x")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(
        f"blocking: median per-round safe / plain torch.save = {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}"
    )
    return 0 if ratio <= TARGET_RATIO else 1


def _plain_round(
    state: dict[str, object], folder: Path, _saver: object, times: list[float], durable: list[float]
) -> None:
    import torch

    start = time.perf_counter()
    torch.save(state, str(folder / "model_plain.pt"))
    times.append(time.perf_counter() - start)
    fd = os.open(folder / "model_plain.pt", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    durable.append(time.perf_counter() - start)
    (folder / "model_plain.pt").unlink()


def _safe_round(
    state: dict[str, object], folder: Path, saver: object, times: list[float], durable: list[float]
) -> None:
    start = time.perf_counter()
    assert saver.start(state, "model_last.pt")
    times.append(time.perf_counter() - start)
    result = saver.wait()[-1]
    durable.append(time.perf_counter() - start)
    assert result.saved and result.valid, result.message
    (folder / "model_last.pt").unlink()


def _runs(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


if __name__ == "__main__":
    raise SystemExit(main())
