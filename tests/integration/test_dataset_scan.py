"""`preflight dataset scan` on a real prepared dataset whose wavs were then replaced: a clipped clip, a
silent one, one at 44.1 kHz stereo and one deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readiness_data import PT_BR, SAMPLE_RATE, make_prepared_dataset

pytest.importorskip("f5_tts", reason="prepare_csv_wavs makes the dataset")
ROOT = Path(__file__).resolve().parents[2]


def test_scan_names_clipped_silent_and_unreadable_clips(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    dataset = make_prepared_dataset(tmp_path, [(1.0, text) for text in PT_BR[:5]])
    wavs = tmp_path / "wavs"
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sf.write(wavs / "clip_001.wav", (1.5 * np.sin(2 * np.pi * 200 * t)).astype("float32"), SAMPLE_RATE)
    sf.write(wavs / "clip_002.wav", np.zeros(SAMPLE_RATE, dtype="float32"), SAMPLE_RATE)
    stereo = 0.2 * np.stack([np.sin(2 * np.pi * 300 * np.arange(44_100) / 44_100)] * 2, axis=1)
    sf.write(wavs / "clip_003.wav", stereo.astype("float32"), 44_100)
    (wavs / "clip_004.wav").unlink()

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_") and k != "ENV_FILE"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "entrypoint", "dataset", "scan", "--dataset", str(dataset), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr  # an unreadable file: training would crash on it
    scan = json.loads(done.stdout)["scan"]
    assert scan["scanned"] == 5
    assert [Path(p).name for p in scan["clipped"]] == ["clip_001.wav"]
    assert [Path(p).name for p in scan["silent"]] == ["clip_002.wav"]
    assert [Path(p).name for p in scan["unreadable"]] == ["clip_004.wav"]
    assert scan["sample_rates"] == {"24000": 3, "44100": 1} and scan["channels"] == {"1": 3, "2": 1}
    assert "5/5" in done.stderr  # the progress bar reached the end
