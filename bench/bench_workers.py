"""The worker clamp against F5-TTS's fixed 16 DataLoader workers, under real cgroup CPU quotas of 1 and 2 CPUs.

F5-TTS's own dataset (`CustomDataset` over a prepared synthetic dataset of 96 clips of 4-6 s, loaded as the
trainer loads it) and a DataLoader built as `Trainer.train` builds it (batch 4 by samples, shuffled,
persistent workers) run in a fresh interpreter inside a cgroup v1 `cpu` child with the quota. The worker
count is either F5-TTS's 16 or what the preflight's clamp gives inside that cgroup (`plan_cpu` on
`probe_cpu()`, asked for 16 with the default CPU_RESERVE). Measured in one run:
- samples/s over the epochs after the first (the workers are up and the first epoch's prefetch is spent),
  the steady state of a long training run; and samples/s over every epoch from the DataLoader's creation
  (the workers' start included), what a short run sees
- peak memory of the parent plus all its workers: the largest sum of PSS (shared pages split between the
  processes that share them) sampled from outside the cgroup every 50 ms; the sum of RSS is shown too
Target: under a 1-CPU quota the clamp delivers >= 2x the steady samples/s of 16 workers, with less memory.

Needs root and a cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu; the cgroups it creates are removed.
Run: python -m bench.bench_workers [--rounds 1] [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent
CPU_HIERARCHY = Path("/sys/fs/cgroup/cpu")
F5_WORKERS = 16  # Trainer.train(num_workers=16), never overridden by F5-TTS's finetune CLI
CLIPS = 96
BATCH = 4
QUOTAS = (1, 2)
TARGET_SPEEDUP_1CPU = 2.0
SAMPLE_EVERY_S = 0.05

_LOADER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    dataset_dir, mode, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    from entrypoint.cpu_plan import plan_cpu
    from entrypoint.probes.cpu import probe_cpu
    plan = plan_cpu(probe_cpu(), override=None, reserve=1, requested_workers=16)  # 1: CPU_RESERVE's default
    workers = plan.workers if mode == "clamp" else 16
    import torch
    from torch.utils.data import DataLoader
    from f5_tts.model.dataset import collate_fn
    from entrypoint.presets import MEL_SPEC_KWARGS
    from entrypoint.train.data import load_train_dataset
    torch.set_num_threads(plan.threads)
    dataset = load_train_dataset(dataset_dir, MEL_SPEC_KWARGS)
    loader = DataLoader(
        dataset, collate_fn=collate_fn, num_workers=workers, persistent_workers=True,
        batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0),
    )
    started = time.perf_counter()
    timed_from, samples = None, 0
    for epoch in range(epochs):
        if epoch == 1:
            timed_from = time.perf_counter()
        for batch in loader:
            if epoch >= 1:
                samples += len(batch["text"])
    seconds = time.perf_counter() - timed_from
    print(json.dumps({"workers": workers, "usable": plan.usable, "samples": samples, "seconds": seconds,
                      "first_epoch_s": timed_from - started}))
    """
).replace("BATCH", str(BATCH))


def make_dataset(folder: Path) -> Path:
    """96 clips of 4-6 s prepared by F5-TTS's own prepare_csv_wavs; made once and kept."""
    from entrypoint.demo import write_synthetic_wavs

    dataset = folder / "dataset"
    if (dataset / ".complete").is_file():
        return dataset
    metadata = write_synthetic_wavs(folder, clips=CLIPS, seconds=5.0)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "f5_tts.train.datasets.prepare_csv_wavs", "--pretrain"]
    command += ["--workers", "1", str(metadata), str(dataset)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"prepare_csv_wavs failed: {done.stderr.strip()[-2000:]}")
    (dataset / ".complete").write_text("ok\n", encoding="utf-8")
    return dataset


def cgroup_problem() -> str | None:
    if os.geteuid() != 0:
        return "creating cgroups needs root"
    if not (CPU_HIERARCHY / "cpu.cfs_quota_us").is_file():
        return f"no cgroup v1 cpu hierarchy at {CPU_HIERARCHY}"
    return None


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _memory_mb(pids: list[int]) -> tuple[float, float]:
    """Sum of PSS and sum of RSS of these processes, in MB."""
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            pass  # a worker that just exited
    return pss / 1024, rss / 1024


def measure(dataset: Path, quota_cpus: int, mode: str, epochs: int) -> dict[str, float]:
    """One DataLoader run inside a fresh cgroup with `quota_cpus` of CPU quota; the cgroup is removed after."""
    cgroup = CPU_HIERARCHY / f"bench-workers-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    try:
        (cgroup / "cpu.cfs_period_us").write_text("100000")
        (cgroup / "cpu.cfs_quota_us").write_text(str(quota_cpus * 100000))
        process = subprocess.Popen(
            [
                "sh",
                "-c",
                'echo $$ > "$1" && exec "$2" -c "$3" "$4" "$5" "$6"',
                "sh",
                str(cgroup / "cgroup.procs"),
                sys.executable,
                _LOADER,
                str(dataset),
                mode,
                str(epochs),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_pss = peak_rss = 0.0
        while process.poll() is None:
            pss, rss = _memory_mb(_tree(process.pid))
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(SAMPLE_EVERY_S)  # a sampling interval, not synchronisation
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"DataLoader run failed ({process.returncode}): {err.strip()[-2000:]}")
    finally:
        cgroup.rmdir()  # the run has exited and been reaped, so the cgroup is empty
    result = json.loads(out.strip().splitlines()[-1])
    per_epoch = result["samples"] / (epochs - 1)
    return {
        **result,
        "samples_s": result["samples"] / result["seconds"],
        "with_start_s": (result["samples"] + per_epoch) / (result["seconds"] + result["first_epoch_s"]),
        "pss_mb": peak_pss,
        "rss_mb": peak_rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each configuration")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    args = parser.parse_args()
    problem = cgroup_problem()
    if problem:
        print(f"cannot measure: {problem}")
        return 1
    OUT.mkdir(exist_ok=True)
    dataset = make_dataset(OUT / "workers_data")
    print(
        f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a quota is a ceiling, not a share)"
    )
    print(
        f"F5-TTS CustomDataset, {CLIPS} clips of 4-6 s, batch {BATCH}, {args.epochs - 1} timed epoch(s), "
        f"{args.rounds} round(s); median samples/s, peak memory of the parent plus workers"
    )
    runs: dict[tuple[int, str], list[dict[str, float]]] = {
        (q, m): [] for q in QUOTAS for m in ("clamp", "f5")
    }
    for _ in range(args.rounds):
        for key in runs:
            runs[key].append(measure(dataset, key[0], key[1], args.epochs))
    summary: dict[tuple[int, str], dict[str, float]] = {}
    for (quota, mode), results in runs.items():
        summary[(quota, mode)] = {
            "workers": results[0]["workers"],
            "samples_s": statistics.median(r["samples_s"] for r in results),
            "with_start_s": statistics.median(r["with_start_s"] for r in results),
            "pss_mb": max(r["pss_mb"] for r in results),
            "rss_mb": max(r["rss_mb"] for r in results),
        }
        s = summary[(quota, mode)]
        label = "clamped" if mode == "clamp" else "F5-TTS default"
        print(
            f"quota {quota} CPU  {label:15s} {int(s['workers']):2d} workers  {s['samples_s']:6.1f} samples/s steady "
            f"({s['with_start_s']:5.1f} with the start)  peak PSS {s['pss_mb']:6.0f} MB (RSS sum {s['rss_mb']:6.0f} MB)"
        )
    checks = []
    for quota in QUOTAS:
        clamp, f5 = summary[(quota, "clamp")], summary[(quota, "f5")]
        speedup = clamp["samples_s"] / f5["samples_s"]
        with_start = clamp["with_start_s"] / f5["with_start_s"]
        memory = clamp["pss_mb"] / f5["pss_mb"]
        print(
            f"quota {quota} CPU: clamp / 16 workers = {speedup:.2f}x samples/s steady, {with_start:.2f}x with the "
            f"start, {memory:.2f}x peak memory"
        )
        if quota == 1:
            checks.append(
                (
                    f"1-CPU quota: clamp {speedup:.2f}x the steady samples/s of 16 workers",
                    speedup >= TARGET_SPEEDUP_1CPU,
                    f">= {TARGET_SPEEDUP_1CPU:g}x",
                )
            )
            checks.append(
                (f"1-CPU quota: clamp peak memory {memory:.2f}x of 16 workers'", memory < 1.0, "< 1x")
            )
    for text, ok, target in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}  (target {target})")
    return 0 if all(ok for _t, ok, _target in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
