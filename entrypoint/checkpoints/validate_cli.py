"""`preflight validate FILE...`: one line (or one JSON object) per file; exit 0 only when every file is valid."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

from entrypoint.checkpoints.validate import Expectation, human_size, validate_file
from entrypoint.checkpoints.verdict import Verdict
from entrypoint.cpu_plan import plan_cpu
from entrypoint.naming import CHECKPOINT_SUFFIXES
from entrypoint.probes.cpu import probe_cpu

PROGRESS_AFTER_S = 1.0  # a bar only for checks long enough to wonder about
PROGRESS_EVERY_S = 0.25


class ProgressBar:
    """Plain-text progress on a stream: redrawn in place on a terminal, a line per quarter otherwise."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self._label = label
        self._stream = stream
        self._tty = stream.isatty()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_quarter = -1
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < PROGRESS_AFTER_S or total <= 0:
            return
        fraction = min(1.0, done / total)
        rate = done / elapsed / 1e9
        text = f"{self._label}  {fraction:4.0%}  {human_size(done)} of {human_size(total)}  {rate:.1f} GB/s"
        if self._tty:
            if now - self._last_draw >= PROGRESS_EVERY_S or done >= total:
                width = 20
                filled = int(fraction * width)
                self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K")
                self._stream.flush()
                self._last_draw = now
                self._shown = True
        else:
            quarter = int(fraction * 4)
            if quarter != self._last_quarter:
                self._stream.write(text + "\n")
                self._stream.flush()
                self._last_quarter = quarter

    def close(self) -> None:
        if self._shown and self._tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def sibling_reference_size(path: Path) -> int | None:
    """The median size of the other checkpoint files with the same suffix next to `path`, if any.

    Used only to word a truncation ("1.7 GB where siblings are 5.1 GB").
    """
    try:
        sizes = [
            p.stat().st_size
            for p in path.parent.iterdir()
            if p != path and p.suffix == path.suffix and p.name.endswith(CHECKPOINT_SUFFIXES) and p.is_file()
        ]
    except OSError:
        return None
    sizes = [s for s in sizes if s > 0]
    return int(statistics.median(sizes)) if sizes else None


def format_line(verdict: Verdict) -> str:
    if not verdict.valid:
        return f"BAD  {verdict.path}  {verdict.cause}"
    what = verdict.kind
    if verdict.kind == "training" and verdict.update is not None:
        what += f" update {verdict.update}"
    note = ""
    if verdict.details.get("load"):
        note = f"; {verdict.details['load']}"
    elif verdict.passed("integrity") and verdict.details.get("crc_recorded") is False:
        note = "; no CRCs recorded"
    elif verdict.details.get("integrity"):
        note = f"; integrity {verdict.details['integrity']}"
    return f"OK   {verdict.path}  {what}  ({', '.join(verdict.levels)}{note})"


def deep_check_threads() -> int:
    """The CPUs this container may use (affinity and every CFS quota, rounded down): the deep check's threads."""
    return plan_cpu(probe_cpu(), override=None, reserve=0, requested_workers=1).usable


def run_validate(
    paths: list[str], *, deep: bool, as_json: bool, load: bool, expect: Expectation | None
) -> int:
    """Validate each file; print one line per file (or a JSON list); 0 when all are valid, else 1."""
    verdicts: list[Verdict] = []
    threads = deep_check_threads() if deep else 1
    for name in paths:
        path = Path(name)
        bar = ProgressBar(f"checking {path.name}") if deep else None
        try:
            verdict = validate_file(
                path,
                deep=deep,
                expect=expect,
                load=load,
                reference_size=sibling_reference_size(path),
                progress=bar,
                threads=threads,
            )
        finally:
            if bar is not None:
                bar.close()
        verdicts.append(verdict)
        if not as_json:
            print(format_line(verdict), flush=True)
    if as_json:
        print(json.dumps([v.to_json() for v in verdicts], indent=2))
    return 0 if verdicts and all(v.valid for v in verdicts) else 1
