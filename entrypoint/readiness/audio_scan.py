"""`preflight dataset scan`: decode every clip of raw.arrow once (soundfile, in blocks) and report what
duration.json cannot show: sample rates and channels, clipped and silent clips, files that cannot be read.

Opt-in: it reads all the audio, minutes for a large dataset. Needs soundfile and numpy (the trainer's
environment has them).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from entrypoint.checks.result import OK, WARN, CheckResult

CLIP_LEVEL = 0.999  # a sample at or above this magnitude counts as clipped
CLIPPED_SHARE = 0.001  # more than 0.1 % clipped samples: a clipped clip
SILENT_RMS = 1e-3  # about -60 dBFS
BLOCK_FRAMES = 65_536


@dataclass
class ClipFacts:
    sample_rate: int
    channels: int
    seconds: float
    peak: float
    rms: float
    clipped_share: float


@dataclass
class ScanResult:
    scanned: int = 0
    sample_rates: Counter[int] = field(default_factory=Counter)
    channels: Counter[int] = field(default_factory=Counter)
    clipped: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def clip_facts(path: str) -> ClipFacts:
    import numpy as np
    import soundfile as sf

    peak, squares, clipped, frames = 0.0, 0.0, 0, 0
    with sf.SoundFile(path) as audio:
        rate, channels = audio.samplerate, audio.channels
        for block in audio.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
            magnitude = np.abs(block)
            peak = max(peak, float(magnitude.max(initial=0.0)))
            squares += float(np.square(block, dtype=np.float64).sum())
            clipped += int((magnitude >= CLIP_LEVEL).sum())
            frames += block.shape[0]
    samples = max(1, frames * channels)
    return ClipFacts(
        rate, channels, frames / rate if rate else 0.0, peak, (squares / samples) ** 0.5, clipped / samples
    )


def scan_audio(paths: list[str], progress: Callable[[int, int], None] | None = None) -> ScanResult:
    result = ScanResult()
    for index, path in enumerate(paths):
        try:
            facts = clip_facts(path)
        except Exception:  # soundfile raises its own and OS errors alike; the path is what matters
            result.unreadable.append(path)
        else:
            result.sample_rates[facts.sample_rate] += 1
            result.channels[facts.channels] += 1
            if facts.clipped_share > CLIPPED_SHARE:
                result.clipped.append(path)
            if facts.rms < SILENT_RMS:
                result.silent.append(path)
        result.scanned = index + 1
        if progress is not None:
            progress(index + 1, len(paths))
    return result


def progress_bar(done: int, total: int) -> None:
    """A one-line progress bar on stderr, redrawn in place (every 1 % and at the end)."""
    if total and (done == total or done % max(1, total // 100) == 0):
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\rscanning audio [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def scan_results(scan: ScanResult) -> tuple[list[CheckResult], dict[str, Any]]:
    def first(paths: list[str]) -> str:
        return f"{len(paths)} clip(s) (the first: {paths[0]})"

    results = []
    rates = ", ".join(f"{rate} Hz x{count}" for rate, count in sorted(scan.sample_rates.items()))
    layout = ", ".join(f"{n} channel(s) x{count}" for n, count in sorted(scan.channels.items()))
    results.append(CheckResult("audio-scan", OK, f"{scan.scanned} clips decoded: {rates}; {layout}"))
    if scan.unreadable:
        results.append(
            CheckResult(
                "audio-scan", WARN, f"{first(scan.unreadable)} cannot be decoded", "replace or remove them"
            )
        )
    if scan.clipped:
        results.append(
            CheckResult(
                "audio-scan",
                WARN,
                f"{first(scan.clipped)} are clipped (over {CLIPPED_SHARE:.1%} of samples at full scale)",
                "re-export them at a lower level, or leave them out",
            )
        )
    if scan.silent:
        results.append(
            CheckResult(
                "audio-scan",
                WARN,
                f"{first(scan.silent)} are silent (RMS below -60 dBFS)",
                "remove them or fix the export",
            )
        )
    data = {
        "scanned": scan.scanned,
        "sample_rates": dict(scan.sample_rates),
        "channels": dict(scan.channels),
        "clipped": scan.clipped,
        "silent": scan.silent,
        "unreadable": scan.unreadable,
    }
    return results, data
