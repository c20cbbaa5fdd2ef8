"""Real prepared datasets for the readiness tests: synthetic 24 kHz wavs of chosen lengths and texts, run
through F5-TTS's own prepare_csv_wavs (raw.arrow, duration.json, vocab.txt)."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

SAMPLE_RATE = 24_000
PT_BR = (
    "A ação do coração custou 25 reais.",
    "Não há razão para tanta emoção.",
    "As canções de verão são lindas.",
    "Ele pôs o pão na mesa às sete.",
    "A informação chegou à estação.",
    "Você já viu a exposição?",
)
_DONE = ".complete"


def make_prepared_dataset(folder: Path, clips: Sequence[tuple[float, str]], seed: int = 0) -> Path:
    """folder/dataset prepared from one wav per (seconds, text); reused when already made."""
    import numpy as np
    import soundfile as sf

    dataset = folder / "dataset"
    if (dataset / _DONE).is_file():
        return dataset
    rng = np.random.default_rng(seed)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    rows = ["audio_file|text"]
    for index, (seconds, text) in enumerate(clips):
        length = max(1, round(SAMPLE_RATE * seconds))
        t = np.arange(length) / SAMPLE_RATE
        audio = 0.3 * np.sin(2 * np.pi * (160 + 25 * (index % 9)) * t) + 0.02 * rng.standard_normal(length)
        path = wavs / f"clip_{index:03d}.wav"
        sf.write(path, audio.astype("float32"), SAMPLE_RATE)
        rows.append(f"{path.resolve()}|{text}")
    metadata = folder / "metadata.csv"
    metadata.write_text("\n".join(rows) + "\n", encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "f5_tts.train.datasets.prepare_csv_wavs", "--pretrain", "--workers", "1"]
    result = subprocess.run(
        [*command, str(metadata), str(dataset)], capture_output=True, text=True, env=env, timeout=600
    )
    if result.returncode != 0 or not (dataset / "raw.arrow").is_file():
        raise RuntimeError(f"prepare_csv_wavs failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    (dataset / _DONE).write_text("ok\n", encoding="utf-8")
    return dataset


def mixed_lengths(count: int = 46, seed: int = 1) -> list[tuple[float, str]]:
    """pt-BR clips from 0.1 s to 33 s: some below 0.3 s, some above 30 s, most in between, a few of whole
    frames."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # Clips of whole frames (256 samples each) make batches that meet the frame budget exactly.
    whole_frames = [256 * k / SAMPLE_RATE for k in (100, 100, 100, 150, 200, 200)]
    fixed = [0.1, 0.25, 0.3, 30.0, 31.5, 33.0, *whole_frames]
    seconds = fixed + [float(round(x, 3)) for x in rng.uniform(0.4, 12.0, count - len(fixed))]
    return [(s, PT_BR[i % len(PT_BR)]) for i, s in enumerate(seconds)]


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def vocab_without(vocab: Path, letters: str, target: Path) -> Path:
    """A copy of `vocab` without the lines of `letters`: a vocabulary that lacks them."""
    lines = vocab.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(line for line in lines if line[:-1] not in set(letters)), encoding="utf-8")
    return target
