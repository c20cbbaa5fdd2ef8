"""Choosing among damaged checkpoints costs one deep read of the winner; a remembered verdict costs nothing.

Scenario (each file F5TTS_Base-sized, 5.39 GB by default): OUTPUT_DIR holds model_last.pt cut to a third,
model_3000.pt with one byte flipped in the last tensor's data (quick validation passes it, only its CRC32
fails), model_2000.pt cut in half and a valid model_1000.pt; BACKUP_DIR holds one valid backup. Every
checkpoint is a real file of its own (a link between two of them would let one be read from the page cache).

Measured in one run, each step in a fresh interpreter with a cold page cache where root allows:
1. the checkpoint decision of `preflight check` (`plan_checkpoint`) against (a) one deep validation of the winner alone and (b) the
   naive way, deep-validating every candidate, in two scenarios:
   - without model_3000.pt: the choice reads a few MB per damaged file, then the winner once.
     Target: choice / one deep read <= 1.5x.
   - with model_3000.pt: a file that passes the quick levels must be read in full to find its bad CRC
     (the flip sits in its last tensor, the worst place), so "one deep read of the winner" honestly means one
     deep read of each file that passes quick validation. Baseline: deep validation of model_3000.pt then of
     the winner, back to back in one process as the choice reads them (reading 10 GB in a row can cost more
     than twice 5 GB on a busy machine). Target: choice / that <= 1.5x; choice / one deep read of the winner
     alone is printed too (2x or more).
   Bytes read (rchar) are printed next to the times: they do not depend on a noisy disk.
2. After one `apply=True` run (which writes OUTPUT_DIR/preflight/verdict-cache.json and quarantines the bad
   files), a second resolution and a bare cache lookup of the unchanged winner (median of many), against an
   uncached quick validation and an uncached deep validation. Target: second resolution < 10 ms.

The valid checkpoint is bench_validate's cached file (made once, kept in bench/out/). Everything this script
creates lies in bench/out/choose/ and is removed at the end unless --keep is given.

Run: python -m bench.bench_choose [--size-gb 0.5] [--rounds 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from bench.bench_validate import FULL_SIZE_GB, PROBE_RCHAR, drop_caches, make_checkpoint
from bench.bench_validate import OUT as VALIDATE_OUT

REPO = Path(__file__).resolve().parent.parent
WORK = VALIDATE_OUT / "choose"
TARGET_CHOICE_OVER_DEEP = 1.5
TARGET_CACHED_RESOLUTION_S = 0.010
CACHED_REPEATS = 200
# What the quick levels may read per damaged file on top of the deep reads (end record, central directory,
# data.pkl): generous, the point is that it is not the file.
QUICK_READ_ALLOWANCE = 64 << 20
SOURCES = "last,numbered,backups,pretrained"


def _copy_prefix(source: Path, target: Path, length: int) -> None:
    """A real, separate file holding the first `length` bytes of `source` (a save cut off mid-write)."""
    partial = target.with_name(target.name + ".partial")
    with open(source, "rb") as src, open(partial, "wb") as dst:
        left = length
        while left > 0:
            sent = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 1 << 30))
            if sent == 0:
                break
            left -= sent
        os.fsync(dst.fileno())
    os.replace(partial, target)


def _last_tensor_middle(path: Path) -> int:
    """Offset of the middle byte of the last tensor's data in file order: only its CRC32 can tell."""
    from entrypoint.checkpoints import torch_zip

    with open(path, "rb") as f:
        tz = torch_zip.read_central_directory(f, path.stat().st_size)
        data = [m for m in tz.members if "/data/" in m.name and m.compressed_size > 0]
        last = max(data, key=lambda m: m.header_offset)
        f.seek(last.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    return last.header_offset + 30 + name_len + extra_len + last.compressed_size // 2


def _flipped_copy(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    offset = _last_tensor_middle(partial)
    with open(partial, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
        os.fsync(f.fileno())
    os.replace(partial, target)


def _scenario_files(valid: Path) -> dict[str, Path]:
    """The damaged checkpoints and a separate valid backup copy, made once per size (kept with --keep)."""
    folder = WORK / f"files_{valid.stat().st_size}"
    folder.mkdir(parents=True, exist_ok=True)
    size = valid.stat().st_size
    files = {
        "cut_third": folder / "cut_third.pt",
        "cut_half": folder / "cut_half.pt",
        "crc_flipped": folder / "crc_flipped.pt",
        "backup": folder / "backup.pt",
    }
    if not files["cut_third"].exists():
        _copy_prefix(valid, files["cut_third"], size // 3)
    if not files["cut_half"].exists():
        _copy_prefix(valid, files["cut_half"], size // 2)
    if not files["crc_flipped"].exists():
        print("making the CRC-only damaged copy ...", flush=True)
        _flipped_copy(valid, files["crc_flipped"])
    if not files["backup"].exists():
        # Its own file: a hard link to the winner would let the naive way read it from the page cache.
        print("making the backup copy ...", flush=True)
        _copy_prefix(valid, files["backup"], size)
    return files


def _scenario(name: str, valid: Path, files: dict[str, Path], with_flipped: bool) -> tuple[Path, Path]:
    """OUTPUT_DIR and BACKUP_DIR as hard links to the files above: every checkpoint is its own file."""
    root = WORK / name
    if root.exists():
        shutil.rmtree(root)
    output, backups = root / "output", root / "backups"
    output.mkdir(parents=True)
    backups.mkdir()
    os.link(files["cut_third"], output / "model_last.pt")
    if with_flipped:
        os.link(files["crc_flipped"], output / "model_3000.pt")
    os.link(files["cut_half"], output / "model_2000.pt")
    os.link(valid, output / "model_1000.pt")
    os.link(files["backup"], backups / "model_1000.pt")
    return output, backups


# Each measurement runs in a fresh interpreter and prints JSON; imports happen before the clock starts.
_PROBE = PROBE_RCHAR + textwrap.dedent(
    """
    import json, statistics, sys, time
    from pathlib import Path
    from entrypoint.checkpoints.cache import VerdictCache
    from entrypoint.actions import perform
    from entrypoint.checkpoints.resolve import plan_checkpoint, settle
    from entrypoint.modes import mode_for
    from entrypoint.checkpoints.validate import validate_file
    from entrypoint.settings import load_settings

    def settings(output, backups):
        environ = {
            "OUTPUT_DIR": output, "BACKUP_DIR": backups, "CHECKPOINT_SOURCES": "@SOURCES@",
            "DEEP_VERIFY": "true", "LOAD_VERIFY": "false", "TRAINER_MODE": "safe",
            "ALLOW_SCRATCH": "false", "PRETRAINED_CHECKPOINT": "", "QUARANTINE_DIR": "",
        }
        return load_settings(environ=environ, cli_env_file=None).settings

    def resolve_checkpoint(s, apply):
        plan = plan_checkpoint(s, mode_for(s))
        results = perform(plan.actions, quarantine_dir=s.quarantine_dir).results if apply else None
        if apply and plan.cache is not None:
            plan.cache.save()
        return settle(plan, results, s)

    def outcome_dict(outcome):
        return {
            "chosen": outcome.load_path, "status": outcome.status, "source": outcome.source,
            "rejected": [[Path(v.path).name, v.cause] for v in outcome.rejected],
            "quarantined": len(outcome.quarantined),
        }

    mode, args = sys.argv[1], sys.argv[2:]
    result = {}
    if mode in ("choose", "apply"):
        s = settings(args[0], args[1])
        before, start = rchar(), time.perf_counter()
        outcome = resolve_checkpoint(s, apply=(mode == "apply"))
        seconds = time.perf_counter() - start
        result = outcome_dict(outcome)
    elif mode in ("deep", "quick"):
        before, start = rchar(), time.perf_counter()
        verdict = validate_file(Path(args[0]), deep=(mode == "deep"))
        seconds = time.perf_counter() - start
        result = {"valid": verdict.valid, "cause": verdict.cause}
    elif mode == "naive":
        before, start = rchar(), time.perf_counter()
        verdicts = [validate_file(Path(p), deep=True) for p in args]
        seconds = time.perf_counter() - start
        chosen = next((v.path for v in verdicts if v.valid), None)
        result = {"chosen": chosen, "valid": [v.valid for v in verdicts]}
    elif mode == "cached":
        output, backups, winner, repeats = args[0], args[1], Path(args[2]), int(args[3])
        s = settings(output, backups)
        before, start = rchar(), time.perf_counter()
        outcome = resolve_checkpoint(s, apply=False)  # the first one, page cache cold
        seconds = time.perf_counter() - start
        result = outcome_dict(outcome)
        result["first_read"] = rchar() - before
        times, reads = [], []
        for _ in range(repeats):
            r0, t0 = rchar(), time.perf_counter()
            again = resolve_checkpoint(s, apply=False)
            times.append(time.perf_counter() - t0)
            reads.append(rchar() - r0)
            assert again.load_path == outcome.load_path
        result["resolve_median"] = statistics.median(times)
        result["resolve_read_median"] = statistics.median(reads)
        lookups, hits = [], 0
        for _ in range(repeats * 5):
            t0 = time.perf_counter()
            cache = VerdictCache.for_output_dir(Path(output))
            hit = cache.get(winner, deep=True)
            lookups.append(time.perf_counter() - t0)
            hits += hit is not None and hit.valid
        result["lookup_median"] = statistics.median(lookups)
        result["lookup_hits"] = hits
        result["lookups"] = len(lookups)
    else:
        raise SystemExit(f"unknown mode {mode}")
    result["seconds"] = seconds
    result["read"] = rchar() - before
    print(json.dumps(result))
    """
).replace("@SOURCES@", SOURCES)


def _measure(mode: str, *args: str | Path, cold: bool) -> dict:
    if cold:
        drop_caches()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Run outside the repository so that no .env file there is picked up by load_settings.
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=WORK,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe {mode} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


@dataclass(frozen=True)
class Scenario:
    label: str
    output: Path
    backups: Path
    with_flipped: bool

    @property
    def winner(self) -> Path:
        return self.output / "model_1000.pt"

    @property
    def flipped(self) -> Path:
        return self.output / "model_3000.pt"

    def naive_order(self) -> list[Path]:
        """Every candidate, in the order the choice considers them."""
        order = [self.output / "model_last.pt"]
        if self.with_flipped:
            order.append(self.flipped)
        return [*order, self.output / "model_2000.pt", self.winner, self.backups / "model_1000.pt"]

    def needed(self) -> list[Path]:
        """The files the choice has to read in full: each one that passes the quick levels."""
        return [self.flipped, self.winner] if self.with_flipped else [self.winner]


def _run_rounds(scenarios: list[Scenario], rounds: int, cold: bool) -> dict[str, list[dict]]:
    """Interleaved rounds, each step in a fresh interpreter after dropping the page cache.

    Baselines: one deep validation of the winner alone, and per scenario the deep validations of the files
    the choice must read in full, back to back in one process as the choice reads them (reading 10 GB in a
    row is slower than twice 5 GB here: the page cache fills up).
    """
    runs: dict[str, list[dict]] = {}
    for i in range(rounds):
        print(f"  round {i + 1}/{rounds}", flush=True)
        runs.setdefault("deep", []).append(_measure("deep", scenarios[0].winner, cold=cold))
        for scenario in scenarios:
            if scenario.with_flipped:
                needed = _measure("naive", *scenario.needed(), cold=cold)
                runs.setdefault(f"{scenario.label}/needed", []).append(needed)
            choice = _measure("choose", scenario.output, scenario.backups, cold=cold)
            runs.setdefault(f"{scenario.label}/choose", []).append(choice)
            naive = _measure("naive", *scenario.naive_order(), cold=cold)
            runs.setdefault(f"{scenario.label}/naive", []).append(naive)
    if "deep" in runs:
        for scenario in scenarios:
            runs.setdefault(f"{scenario.label}/needed", runs["deep"])
    return runs


def _check_choices(runs: dict[str, list[dict]], scenarios: list[Scenario]) -> list[str]:
    """The figures mean something only if every run chose the valid file and saw the damage."""
    wrong = []
    for run in runs.get("deep", []):
        if not run["valid"]:
            wrong.append(f"deep validation flagged the valid file: {run['cause']}")
    for scenario in scenarios:
        winner = str(scenario.winner)
        expected = {"model_last.pt", "model_2000.pt"} | (
            {"model_3000.pt"} if scenario.with_flipped else set()
        )
        for run in runs.get(f"{scenario.label}/choose", []):
            if run["chosen"] != winner or run["source"] != "numbered":
                wrong.append(f"the choice loaded {run['chosen']} ({run['status']}: {run['rejected']})")
            rejected = {name for name, _cause in run["rejected"]}
            if rejected != expected:
                wrong.append(f"the choice rejected {sorted(rejected)}, expected {sorted(expected)}")
            causes = [cause for name, cause in run["rejected"] if name == "model_3000.pt"]
            if causes and "CRC" not in causes[0]:
                wrong.append(f"model_3000.pt was rejected for {causes[0]!r}, not its CRC")
        for kind in ("naive", "needed"):
            for run in runs.get(f"{scenario.label}/{kind}", []):
                if run.get("chosen", winner) != winner:
                    wrong.append(f"{kind}: deep validation chose {run['chosen']}")
    return wrong


def _report_scenario(title: str, scenario: Scenario, runs: dict[str, list[dict]]) -> list:
    def secs(kind: str) -> list[float]:
        return [float(r["seconds"]) for r in runs[kind]]

    def read(kind: str) -> float:
        return _median([float(r["read"]) for r in runs[kind]])

    label = scenario.label
    deep, choose, naive = secs("deep"), secs(f"{label}/choose"), secs(f"{label}/naive")
    needed = secs(f"{label}/needed")
    over_deep = _median([c / d for c, d in zip(choose, deep, strict=True)])
    over_needed = _median([c / n for c, n in zip(choose, needed, strict=True)])
    naive_over_choose = _median([n / c for n, c in zip(naive, choose, strict=True)])
    print(f"\n{title}\n  (median seconds of {len(deep)} rounds; bytes read)")
    print(f"  one deep read of the winner alone          {_median(deep):7.3f} s  read {_gb(read('deep'))}")
    if scenario.with_flipped:
        print(
            f"  deep reads of model_3000.pt + the winner   {_median(needed):7.3f} s  "
            f"read {_gb(read(f'{label}/needed'))}  (back to back, one process)"
        )
    print(
        f"  plan_checkpoint (preflight check)          {_median(choose):7.3f} s  "
        f"read {_gb(read(f'{label}/choose'))}"
    )
    print(
        f"  naive: deep-validate every candidate       {_median(naive):7.3f} s  "
        f"read {_gb(read(f'{label}/naive'))}"
    )
    print(f"  choice / one deep read of the winner = {over_deep:.2f}x (median of per-round ratios)")
    if scenario.with_flipped:
        print(f"  choice / the deep reads it needs = {over_needed:.2f}x")
    naive_bytes = read(f"{label}/naive") / read(f"{label}/choose")
    print(f"  naive / choice = {naive_over_choose:.2f}x (time), {naive_bytes:.2f}x (bytes)")

    what = "with model_3000.pt" if scenario.with_flipped else "without model_3000.pt"
    ratio_text = (
        f"choice / deep reads of model_3000.pt + the winner = {over_needed:.2f}x"
        if scenario.with_flipped
        else f"choice / one deep read of the winner = {over_deep:.2f}x"
    )
    needed_bytes = read(f"{label}/needed")
    damaged = 3 if scenario.with_flipped else 2
    return [
        (f"{what}: {ratio_text}", over_needed <= TARGET_CHOICE_OVER_DEEP, f"<= {TARGET_CHOICE_OVER_DEEP}x"),
        (
            f"{what}: the choice read {_gb(read(f'{label}/choose'))}, the deep reads it needs "
            f"{_gb(needed_bytes)}",
            read(f"{label}/choose") <= needed_bytes + damaged * QUICK_READ_ALLOWANCE,
            f"<= that + {QUICK_READ_ALLOWANCE >> 20} MB per damaged file",
        ),
        (f"{what}: naive / choice = {naive_bytes:.2f}x in bytes", naive_bytes >= 1.4, ">= 1.4x"),
    ]


def _cache_part(valid: Path, files: dict[str, Path], deep_s: float, rounds: int, cold: bool) -> list:
    output, backups = _scenario("cached", valid, files, with_flipped=True)
    winner = output / "model_1000.pt"
    print("\nverdict cache: one apply=True run, then resolutions of the unchanged files", flush=True)
    applied = _measure("apply", output, backups, cold=cold)
    quick = [_measure("quick", winner, cold=cold) for _ in range(max(rounds, 3))]
    cached = _measure("cached", output, backups, winner, CACHED_REPEATS, cold=cold)
    problems = []
    if applied["chosen"] != str(winner) or cached["chosen"] != str(winner):
        problems.append(f"chose {applied['chosen']} then {cached['chosen']}, expected {winner}")
    if cached["lookup_hits"] != cached["lookups"]:
        problems.append(f"only {cached['lookup_hits']} of {cached['lookups']} lookups hit the cache")
    if applied["quarantined"] != 3:
        problems.append(f"the apply run quarantined {applied['quarantined']} files, expected 3")
    if cached["resolve_read_median"] > 1 << 20:
        problems.append(f"a cached resolution read {cached['resolve_read_median']} bytes: not from the cache")
    if not (output / "preflight" / "verdict-cache.json").is_file():
        problems.append("the apply run wrote no verdict cache")
    for problem in problems:
        print(f"WRONG  {problem}")

    quick_s = _median([float(q["seconds"]) for q in quick])
    resolve_s, lookup_s = float(cached["resolve_median"]), float(cached["lookup_median"])
    print(f"  first apply=True run (uncached; quarantines 3 files) {applied['seconds']:8.3f} s")
    print(f"  uncached deep validation of the winner (part 1)      {deep_s:8.3f} s")
    print(
        f"  uncached quick validation of the winner               {quick_s * 1e3:8.2f} ms  "
        f"read {quick[0]['read'] / 1e6:.2f} MB"
    )
    print(
        f"  next resolution, cold page cache (once)               {cached['seconds'] * 1e3:8.2f} ms  "
        f"read {cached['first_read'] / 1e3:.1f} kB"
    )
    print(
        f"  next resolution, median of {CACHED_REPEATS}                     {resolve_s * 1e3:8.3f} ms  "
        f"read {cached['resolve_read_median'] / 1e3:.1f} kB"
    )
    print(f"  cache load + lookup, median of {cached['lookups']}               {lookup_s * 1e3:8.3f} ms")
    print(
        f"  uncached deep / cached resolution = {deep_s / resolve_s:,.0f}x; quick / cached = {quick_s / resolve_s:,.1f}x"
    )
    return [
        (
            f"a second resolution from the verdict cache takes {resolve_s * 1e3:.2f} ms",
            resolve_s < TARGET_CACHED_RESOLUTION_S and not problems,
            f"< {TARGET_CACHED_RESOLUTION_S * 1e3:.0f} ms",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=FULL_SIZE_GB, help="checkpoint size (default 5.39)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each cold measurement (>= 1)")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/choose/ (the damaged copies)")
    args = parser.parse_args()
    rounds = max(1, args.rounds)

    VALIDATE_OUT.mkdir(exist_ok=True)
    valid = VALIDATE_OUT / f"F5TTS_Base_shaped_{args.size_gb:g}GB.pt"
    if not valid.exists():
        print(f"making {valid.name} (once; cached in {VALIDATE_OUT}) ...", flush=True)
        make_checkpoint(valid, args.size_gb)
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        files = _scenario_files(valid)
        cold = drop_caches()
        print(
            f"checkpoints of {_gb(valid.stat().st_size)} ({valid.name}); page cache "
            f"{'dropped before each step' if cold else 'WARM (not root): figures understate reads'}",
            flush=True,
        )
        scenarios = [
            Scenario("without", *_scenario("without", valid, files, with_flipped=False), with_flipped=False),
            Scenario("with", *_scenario("with", valid, files, with_flipped=True), with_flipped=True),
        ]
        runs = _run_rounds(scenarios, rounds, cold)
        wrong = _check_choices(runs, scenarios)
        checks = _report_scenario(
            "OUTPUT_DIR: model_last.pt (cut to 1/3), model_2000.pt (cut to 1/2), model_1000.pt (valid); "
            "BACKUP_DIR: model_1000.pt (valid)",
            scenarios[0],
            runs,
        )
        checks += _report_scenario(
            "OUTPUT_DIR: model_last.pt (cut to 1/3), model_3000.pt (one flipped byte: only its CRC fails), "
            "model_2000.pt (cut to 1/2), model_1000.pt (valid); BACKUP_DIR: model_1000.pt (valid)",
            scenarios[1],
            runs,
        )
        deep_s = _median([float(r["seconds"]) for r in runs["deep"]])
        checks += _cache_part(valid, files, deep_s, rounds, cold)
        for problem in wrong:
            print(f"WRONG  {problem}")
        checks.append(("every run chose model_1000.pt and rejected the damaged files", not wrong, "always"))
        print()
        for text, ok, target in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {text}  (target {target})")
        return 0 if all(ok for _text, ok, _target in checks) else 1
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
