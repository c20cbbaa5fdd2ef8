"""Time from SIGTERM to exit of the trainer holding an F5TTS_Base-sized training state.

Method: a child process builds the real F5TTS_Base model (dim 1024, depth 22, heads 16, ff_mult 2,
text_dim 512, conv_layers 4; 2545 text tokens) inside our SafeTrainer (F5-TTS's Trainer: EMA, fused AdamW,
accelerate on the CPU), takes one optimizer step so the AdamW moments exist, installs the stop handlers and
waits between two updates. The parent sends SIGTERM and measures until the child has exited: the handler,
the crash-safe save of model_last.pt (5.4 GB: temp file, fsync, rename, folder fsync, validation) and the
interpreter's exit. No training data is needed for that path. What it leaves out is the rest of the update
in progress when the signal comes (one optimizer step: well under a second on a GPU for this model, far
longer on a CPU); add it for the bound. Baseline in the same run: a plain torch.save of the same state
(no fsync), which is all a stock F5-TTS save costs and what it would lose to a kill.

Run: python -m bench.bench_sigterm [--dir bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB_SIZE = 2545


def child(folder: Path) -> None:
    import torch
    from f5_tts.model import CFM, DiT
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    from entrypoint.presets import MEL_CHANNELS, MEL_SPEC_KWARGS, PRESETS
    from entrypoint.train.graceful import install_stop_handlers
    from entrypoint.train.safe_trainer import SafeTrainer, TrainingStopped

    stop = install_stop_handlers()
    config = {k: v for k, v in PRESETS["F5TTS_Base"].config.items()}
    model = CFM(
        transformer=DiT(**config, text_num_embeds=VOCAB_SIZE, mel_dim=MEL_CHANNELS),
        mel_spec_kwargs=dict(MEL_SPEC_KWARGS),
    )
    trainer = SafeTrainer(
        model,
        checkpoint=None,
        stop=stop,
        max_updates=0,
        backups=None,
        tensorboard_dir=None,
        epochs=1,
        learning_rate=1e-5,
        checkpoint_path=str(folder),
        logger=None,
        accelerate_kwargs={"mixed_precision": "no"},
    )
    warmup = LinearLR(trainer.optimizer, start_factor=1e-8, end_factor=1.0, total_iters=10)
    decay = LinearLR(trainer.optimizer, start_factor=1.0, end_factor=1e-8, total_iters=10)
    trainer.scheduler = SequentialLR(trainer.optimizer, schedulers=[warmup, decay], milestones=[10])
    for parameter in trainer.model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.ema_model.update()
    trainer.update_count = 1

    # Two plain saves, the faster one counts: the first also pays for first-touch page-cache costs.
    plain_times = []
    for _ in range(2):
        os.sync()
        start = time.perf_counter()
        torch.save(trainer.checkpoint_dict(1), str(folder / "plain.pt"))
        plain_times.append(time.perf_counter() - start)
        plain_bytes = (folder / "plain.pt").stat().st_size
        (folder / "plain.pt").unlink()
    plain_s = min(plain_times)
    os.sync()
    print(json.dumps({"ready": True, "plain_s": plain_s, "bytes": plain_bytes}), flush=True)
    while not stop.requested:
        signal.pause()
    trainer.finish_stopped(TrainingStopped(1, stop.signal_name))
    trainer.checkpoints.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-sigterm-", dir=args.dir))
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1))
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_sigterm", "--child", str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        ready = {}
        for line in process.stdout:
            if line.startswith("{"):
                ready = json.loads(line)
                break
            print(line, end="")
        if not ready:
            print("the child ended before it was ready")
            return 1
        start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        rest = process.stdout.read()
        code = process.wait()
        elapsed = time.perf_counter() - start
        saved = (folder / "model_last.pt").stat().st_size if (folder / "model_last.pt").exists() else 0
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    print(rest.strip())
    print(
        f"state: {ready['bytes'] / 1e9:.2f} GB (F5TTS_Base model + EMA + AdamW), saved {saved / 1e9:.2f} GB"
    )
    print(f"SIGTERM -> exit (code {code}): {elapsed:.2f} s")
    print(f"plain torch.save of the same state (no fsync, best of 2): {ready['plain_s']:.2f} s")
    print(f"ratio: {elapsed / ready['plain_s']:.2f}x")
    print(
        "bound: the rest of one update + this; set the Compose stop_grace_period well above it "
        f"(e.g. >= {max(60, int(3 * elapsed) + 30)} s on this disk)"
    )
    return 0 if code == 0 and saved > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
