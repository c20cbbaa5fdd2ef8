"""Choosing among many numbered checkpoints: the work grows as N log N, and a run after a run is answered from
the verdict cache.

Scenario: OUTPUT_DIR holds `--count` (10,000 by default) numbered checkpoints model_1.pt ... model_N.pt, each a
real file of its own (a copy of one small valid training checkpoint made with torch.save), as a folder that
keeps every save looks after a long training. Measured in one process, in this order:

1. Floor: listing OUTPUT_DIR and a stat() of every file, the least any choice must do.
2. The selection step alone (`select.choose`, PREFER_NEWEST, with every verdict already known; median of
   `--rounds`) at `--small` files (2,000 by default) and at `--count` files, against the previous way of
   finding each file's reference size (a scan of the whole list per file, quadratic) at `--small` files
   (once: it takes seconds).
3. `resolve_checkpoint(apply=True)` with no verdict cache: the first `preflight run` (a quick validation of
   every file, one deep validation of the winner); it writes the cache.
4. `resolve_checkpoint(apply=False)` and `(apply=True)` again, median of `--rounds`: the next `check` and
   `run`, every verdict from the cache. Target: under 1 s at 10,000 files.

The files are made once and kept in bench/out/select/ (about 25 MB at 10,000).

Run: python -m bench.bench_select [--count 10000] [--small 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.bench_validate import OUT

WORK = OUT / "select"
TARGET_CACHED_S = 1.0


def _small_checkpoint(path: Path) -> None:
    import torch

    state = {
        "model_state_dict": {"transformer.proj.weight": torch.zeros(16, 16)},
        "ema_model_state_dict": {
            "ema_model.transformer.proj.weight": torch.zeros(16, 16),
            "step": torch.tensor(1),
        },
        "optimizer_state_dict": {"state": {}, "param_groups": []},
        "scheduler_state_dict": {},
        "update": 1,
    }
    torch.save(state, path)


def _folder(count: int) -> Path:
    """OUTPUT_DIR with model_1.pt ... model_<count>.pt, made once."""
    output = WORK / f"output-{count}"
    marker = output / ".complete"
    if marker.exists():
        return output
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    template = WORK / "template.pt"
    _small_checkpoint(template)
    for number in range(1, count + 1):
        shutil.copyfile(template, output / f"model_{number}.pt")
    marker.write_text("")
    return output


def _settings(output: Path) -> Any:  # entrypoint.settings.Settings, imported late
    from entrypoint.settings import load_settings

    environ = {
        "OUTPUT_DIR": str(output),
        "BACKUP_DIR": str(WORK / "backups"),
        "CHECKPOINT_SOURCES": "last,numbered",
        "DEEP_VERIFY": "true",
        "LOAD_VERIFY": "false",
        "TRAINER_MODE": "safe",
        "PREFER_NEWEST": "true",
        "ALLOW_SCRATCH": "false",
        "PRETRAINED_CHECKPOINT": "",
        "QUARANTINE_DIR": "",
    }
    return load_settings(environ=environ, cli_env_file=None).settings


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def _previous_reference_size(candidate: Any, candidates: Sequence[Any]) -> int | None:
    """The reference size as it was computed before: a scan of every candidate for each one."""
    from entrypoint.checkpoints.select import TRAINING_SOURCES

    if candidate.source == "pretrained":
        siblings = [c for c in candidates if c.source == "pretrained" and c.path != candidate.path]
    else:
        siblings = [c for c in candidates if c.source in TRAINING_SOURCES and c.path != candidate.path]
        if candidate.update_hint is not None:
            older = [
                c
                for c in siblings
                if c.source == candidate.source
                and c.update_hint is not None
                and c.update_hint < candidate.update_hint
            ]
            if older:
                return max(older, key=lambda c: c.update_hint or 0).size
    sizes = [c.size for c in siblings if c.size > 0]
    return max(sizes) if sizes else None


class _PreviousSizes:
    def __init__(self, candidates: Sequence[Any]) -> None:
        self._candidates = candidates

    def of(self, candidate: Any) -> int | None:
        return _previous_reference_size(candidate, self._candidates)


def _selection_step(output: Path, previous: bool, rounds: int) -> tuple[float, str]:
    """choose() alone, every verdict known beforehand (the validator's cost taken out)."""
    from entrypoint.checkpoints import select
    from entrypoint.checkpoints.discover import discover
    from entrypoint.checkpoints.validate import validate_file

    found = discover(("last", "numbered"), output, None, None)
    known = {c.path: validate_file(c.path) for c in found.candidates}

    def check(path: Path, deep: bool, reference: int | None) -> Any:
        return known[path]

    index = select.ReferenceSizes
    if previous:
        select.ReferenceSizes = _PreviousSizes  # type: ignore[assignment,misc]
    try:
        timings = [
            _timed(lambda: select.choose(found.candidates, check, deep=True, prefer_newest=True))
            for _ in range(rounds)
        ]
    finally:
        select.ReferenceSizes = index  # type: ignore[misc]
    choice = timings[0][1]
    seconds = statistics.median(t for t, _ in timings)
    return seconds, choice.candidate.path.name if choice.candidate else "nothing"


def _floor(output: Path) -> float:
    def list_and_stat() -> None:
        for name in os.listdir(output):
            os.stat(output / name)

    return _timed(list_and_stat)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)  # no .env of the repository is read by the settings
    from entrypoint.checkpoints.pipeline import resolve_checkpoint

    from entrypoint.checkpoints.cache import VerdictCache

    big, small = _folder(args.count), _folder(args.small)
    print(f"{args.count} numbered checkpoints of {(big / 'model_1.pt').stat().st_size} B in {big}")

    floor = _floor(big)
    print(f"floor: list + stat of {args.count} files         {floor * 1000:8.1f} ms")

    previous_small, winner_previous = _selection_step(small, previous=True, rounds=1)
    now_small, winner_small = _selection_step(small, previous=False, rounds=args.rounds)
    now_big, winner_big = _selection_step(big, previous=False, rounds=args.rounds)
    assert winner_previous == winner_small, (winner_previous, winner_small)
    print(
        f"selection step, {args.small} files: previous way {previous_small:7.3f} s, now {now_small:7.3f} s "
        f"({previous_small / now_small:.0f}x faster)"
    )
    print(
        f"selection step, {args.count} files: now {now_big:7.3f} s "
        f"({now_big / args.count * 1e6:.1f} us a file; at {args.small}: {now_small / args.small * 1e6:.1f} us, "
        f"the previous way {previous_small / args.small * 1e6:.0f} us) -> {winner_big}"
    )

    settings = _settings(big)
    cache_file = VerdictCache.for_output_dir(big).path
    cache_file.unlink(missing_ok=True)
    cold, outcome = _timed(lambda: resolve_checkpoint(settings, apply=True))
    chosen = getattr(outcome, "load_path", None)
    print(f"first run, no cache (validates every file):    {cold:8.3f} s  -> {chosen}")
    entries = len(VerdictCache.load(cache_file).entries)
    print(f"verdict cache after it: {entries} entries for {args.count} files")

    checks = [_timed(lambda: resolve_checkpoint(settings, apply=False))[0] for _ in range(args.rounds)]
    runs = [_timed(lambda: resolve_checkpoint(settings, apply=True))[0] for _ in range(args.rounds)]
    check_s, run_s = statistics.median(checks), statistics.median(runs)
    print(
        f"next check, cached (median of {args.rounds}):              {check_s:8.3f} s  ({check_s / floor:.0f}x floor)"
    )
    print(
        f"next run, cached (median of {args.rounds}):                {run_s:8.3f} s  ({run_s / floor:.0f}x floor)"
    )
    print(f"cold / cached run: {cold / run_s:.1f}x")

    missed = []
    if entries < args.count:
        missed.append(f"the cache holds {entries} of {args.count} files")
    if args.count >= 10_000 and max(check_s, run_s) >= TARGET_CACHED_S:
        missed.append(f"a cached choice among {args.count} took {max(check_s, run_s):.2f} s (target < 1 s)")
    for line in missed:
        print(f"MISSED: {line}")
    print("target met: 10,000 candidates chosen in under 1 s" if not missed else "target missed")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
