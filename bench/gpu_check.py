"""The GPU check, for a machine with an NVIDIA GPU: through `preflight run`, about 50 updates of
F5TTS_v1_Base on synthetic data with mixed precision. Prints updates per second, peak GPU memory, the time
of a checkpoint save and the preflight's GPU report, and writes them as JSON.

Run: python -m bench.gpu_check [--updates 50] [--preset F5TTS_v1_Base] [--precision bf16] [--out DIR]
(`--preset tiny --updates 4 --precision no` runs the same path on a CPU, to try the script itself.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.demo import make_synthetic_dataset, write_env_file

_SAVED_LAST = re.compile(r"Saved last checkpoint at update (\d+)")


class GpuMemorySampler:
    """Highest memory.used over all GPUs, sampled from nvidia-smi while training runs."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.peak_mib = 0
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tool = shutil.which("nvidia-smi")

    def _run(self) -> None:
        while self._tool and not self._stop.is_set():
            done = subprocess.run(
                [self._tool, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                check=False,
            )
            for line in done.stdout.split():
                if line.strip().isdigit():
                    self.peak_mib = max(self.peak_mib, int(line))
            self._stop.wait(self._interval)

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settings_for(args: argparse.Namespace, dataset: Path, run: Path) -> dict[str, str]:
    return {
        "DATASET_DIR": str(dataset),
        "OUTPUT_DIR": str(run / "output"),
        "BACKUP_DIR": str(run / "backups"),
        "LOG_DIR": str(run / "logs"),
        "MODEL_PRESET": args.preset,
        "TOKENIZER": "custom",
        "BATCH_SIZE": "3200",
        "BATCH_SIZE_TYPE": "frame",
        "MIXED_PRECISION": args.precision,
        "WARMUP_UPDATES": "10",
        "LAST_EVERY_UPDATES": str(max(1, args.updates // 2)),
        "SAVE_EVERY_UPDATES": str(args.updates),
        "BACKUP_EVERY_UPDATES": str(args.updates),
        "LOGGER": "none",
        "ALLOW_SCRATCH": "true",
        "REQUIRE_GPU": "true" if args.preset != "tiny" else "false",
        "MAX_UPDATES": str(args.updates),
        "EPOCHS": "1000",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--preset", default="F5TTS_v1_Base")
    parser.add_argument("--precision", default="bf16", choices=("no", "fp16", "bf16"))
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--out", default=os.environ.get("OUT", "data/gpu-check"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = make_synthetic_dataset(out, clips=args.clips)
    run = out / time.strftime("run-%Y%m%d-%H%M%S")
    env_file = write_env_file(run / "gpu-check.env", settings_for(args, dataset, run))
    preflight = [sys.executable, "-m", "entrypoint"]

    check = subprocess.run(
        [*preflight, "check", "--json", "--env-file", str(env_file)], capture_output=True, text=True
    )
    report = json.loads(check.stdout) if check.stdout.strip().startswith("{") else {}
    gpu_line = next(
        (c["message"] for c in report.get("checks", []) if c["name"] == "gpu"), check.stderr.strip()
    )
    print(f"preflight GPU report: {gpu_line}", flush=True)

    saved_at: dict[int, float] = {}
    started = time.monotonic()
    with GpuMemorySampler() as sampler:
        process = subprocess.Popen(
            [*preflight, "run", "--env-file", str(env_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            match = _SAVED_LAST.search(line)
            if match:
                saved_at[int(match.group(1))] = time.monotonic()
        code = process.wait()
    total_s = time.monotonic() - started

    figures: dict[str, object] = {"exit_code": code, "preset": args.preset, "precision": args.precision}
    figures["preflight_gpu"] = gpu_line
    figures["wall_s_including_preflight_and_model_build"] = round(total_s, 1)
    updates = sorted(saved_at)
    if len(updates) >= 2:
        first, last = updates[0], updates[-1]
        figures["updates_per_s"] = round((last - first) / (saved_at[last] - saved_at[first]), 3)
    figures["peak_gpu_memory_mib"] = sampler.peak_mib or None
    checkpoint = run / "output" / "model_last.pt"
    if checkpoint.is_file():
        figures["checkpoint_gb"] = round(checkpoint.stat().st_size / 1e9, 2)
        figures["save_s"] = time_safe_save(checkpoint)
    print("\n== GPU check figures\n" + json.dumps(figures, indent=2))
    (out / "gpu-check.json").write_text(json.dumps(figures, indent=2) + "\n")
    return code


def time_safe_save(checkpoint: Path) -> float:
    """One safe save (temp file, fsync, rename, validation) of the state just trained, timed until durable.
    It goes into a scratch folder of this check's own run, next to the run's output."""
    import torch

    from entrypoint.train.checkpoint_manager import CheckpointWriter

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saver = CheckpointWriter(checkpoint.parent.parent / "save-timing", print)
    started = time.monotonic()
    saver.save(state, checkpoint.name)
    elapsed = time.monotonic() - started
    saver.close()
    return round(elapsed, 2)


if __name__ == "__main__":
    raise SystemExit(main())
