"""`python -m tools.demo`: tiny real F5-TTS training on the CPU, twice, to show the resume.

Generates a few synthetic clips, prepares them with F5-TTS's own prepare_csv_wavs, writes a .env for the
`tiny` model preset and runs `preflight run` with it twice: the first run trains from scratch, the second
resumes from the model_last.pt the first one saved. Everything lands under data/demo/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SAMPLE_RATE = 24_000
_WORDS = ("hello", "world", "tiny", "voice", "model", "test", "sound", "check", "resume", "safe")
_DONE = ".complete"
FIRST_RUN_UPDATES = 4
SECOND_RUN_UPDATES = 8


def write_synthetic_wavs(folder: Path, clips: int = 8, seconds: float = 1.0, seed: int = 0) -> Path:
    """Write `clips` short 24 kHz wavs (tones plus noise) and a metadata.csv (audio_file|text) for them."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    rows = ["audio_file|text"]
    for index in range(clips):
        length = int(SAMPLE_RATE * seconds * (0.8 + 0.4 * rng.random()))
        t = np.arange(length) / SAMPLE_RATE
        audio = 0.3 * np.sin(2 * np.pi * (180 + 40 * index) * t) + 0.02 * rng.standard_normal(length)
        path = wavs / f"clip_{index:03d}.wav"
        sf.write(path, audio.astype("float32"), SAMPLE_RATE)
        rows.append(f"{path.resolve()}|" + " ".join(_WORDS[(index + k) % len(_WORDS)] for k in range(3)))
    metadata = folder / "metadata.csv"
    metadata.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return metadata


def make_synthetic_dataset(folder: Path, clips: int = 8) -> Path:
    """A prepared dataset (raw.arrow, duration.json, vocab.txt) in folder/dataset, made once and reused."""
    dataset = folder / "dataset"
    if (dataset / _DONE).is_file():
        return dataset
    metadata = write_synthetic_wavs(folder, clips)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "f5_tts.train.datasets.prepare_csv_wavs", "--pretrain"]
    command += ["--workers", "1", str(metadata), str(dataset)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0 or not (dataset / "raw.arrow").is_file():
        raise RuntimeError(f"prepare_csv_wavs failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    (dataset / _DONE).write_text("ok\n", encoding="utf-8")
    return dataset


def tiny_cpu_settings(dataset: Path, run_dir: Path) -> dict[str, str]:
    """A fast CPU run of the `tiny` preset on `dataset`, writing everything under `run_dir`."""
    return {
        "DATASET_DIR": str(dataset),
        "OUTPUT_DIR": str(run_dir / "output"),
        "BACKUP_DIR": str(run_dir / "backups"),
        "LOG_DIR": str(run_dir / "logs"),
        "MODEL_PRESET": "tiny",
        "TOKENIZER": "custom",
        "BATCH_SIZE": "2",
        "BATCH_SIZE_TYPE": "sample",
        "LEARNING_RATE": "1e-4",
        "WARMUP_UPDATES": "2",
        "LAST_EVERY_UPDATES": "2",
        "LOGGER": "none",
        "DATALOADER_WORKERS": "1",
        "ALLOW_SCRATCH": "true",
    }


def demo_settings(dataset: Path, run_dir: Path) -> dict[str, str]:
    """The tiny CPU run with numbered saves and backups, stopping where the first run ends."""
    return {
        **tiny_cpu_settings(dataset, run_dir),
        "SAVE_EVERY_UPDATES": "4",
        "KEEP_CHECKPOINTS": "2",
        "BACKUP_EVERY_UPDATES": "4",
        "BACKUP_KEEP": "2",
        "MAX_UPDATES": str(FIRST_RUN_UPDATES),
    }


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")
    return path


def run_preflight(env_file: Path, overrides: dict[str, str]) -> int:
    env = dict(os.environ, **overrides)
    command = [sys.executable, "-m", "entrypoint", "run", "--env-file", str(env_file)]
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    root = Path("data/demo").resolve()
    started = time.monotonic()
    print(f"== preparing a synthetic dataset in {root / 'dataset'}", flush=True)
    try:
        dataset = make_synthetic_dataset(root)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"error: could not prepare the demo dataset: {error}", file=sys.stderr)
        return 1
    run_dir = root / time.strftime("run-%Y%m%d-%H%M%S")
    env_file = write_env_file(root / "demo.env", demo_settings(dataset, run_dir))
    print(f"== settings: {env_file}; checkpoints: {run_dir / 'output'}", flush=True)
    for number, updates in ((1, FIRST_RUN_UPDATES), (2, SECOND_RUN_UPDATES)):
        what = "from scratch" if number == 1 else "resuming from the first run's model_last.pt"
        print(f"\n== run {number}: preflight run, training {what} up to update {updates}", flush=True)
        code = run_preflight(env_file, {"MAX_UPDATES": str(updates)})
        if code != 0:
            print(f"error: run {number} exited with {code}; see {run_dir / 'logs' / 'training.log'}")
            return code
    print(
        f"\n== done in {time.monotonic() - started:.0f} s: the second run resumed where the first stopped. "
        f"Checkpoints: {run_dir / 'output'}, backups: {run_dir / 'backups'}, "
        f"log: {run_dir / 'logs' / 'training.log'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
