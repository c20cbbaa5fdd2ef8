"""The readiness checks (vocabulary coverage, text warnings, batch plan, audio facts) on a synthetic
100,000-clip prepared dataset (raw.arrow as prepare_csv_wavs writes it, duration.json, vocab.txt): wall time
and peak RSS of a fresh process, next to just reading the two files in the same way (json + pyarrow).
Target: under 2 s and under 300 MB.

Run: python -m bench.bench_readiness [--clips N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_S = 2.0
TARGET_MB = 300.0
WORDS = [
    "ação",
    "coração",
    "razão",
    "emoção",
    "canção",
    "verão",
    "estação",
    "informação",
    "você",
    "já",
    "pôs",
    "pão",
    "mesa",
    "sete",
    "lindas",
    "não",
    "há",
    "para",
    "tanta",
    "chegou",
    "viu",
    "exposição",
    "de",
    "do",
    "da",
    "a",
    "o",
    "as",
    "os",
    "e",
    "em",
    "um",
    "uma",
    "com",
    "por",
    "que",
]

_CHILD = r"""
import json, sys, time
from pathlib import Path
mode, folder = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, sys.argv[3])
if mode == "readiness":
    from entrypoint.readiness import readiness_checks
    from entrypoint.settings import load_settings
    settings = load_settings(environ={"DATASET_DIR": str(folder), "MODEL_PRESET": "tiny"}).settings
start = time.perf_counter()
if mode == "baseline":
    import pyarrow as pa, pyarrow.compute as pc
    durations = json.loads((folder / "duration.json").read_text())["duration"]
    table = pa.ipc.open_stream(pa.memory_map(str(folder / "raw.arrow"))).read_all()
    tokens = pc.list_flatten(table.column("text").combine_chunks())
    result = (len(durations), len(tokens))
else:
    checks, data = readiness_checks(settings, folder / "vocab.txt", 1)
    result = [c.status for c in checks]
elapsed = time.perf_counter() - start
# VmHWM, not ru_maxrss: a forked child inherits its parent's ru_maxrss across exec.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "peak_mb": peak_kb / 1024, "result": str(result)}))
"""


def make_dataset(folder: Path, clips: int) -> None:
    import pyarrow as pa

    rng = random.Random(0)
    durations, paths, texts = [], [], []
    for index in range(clips):
        seconds = round(rng.uniform(1.0, 15.0), 3)
        words = [rng.choice(WORDS) for _ in range(max(2, int(seconds * 2.2)))]
        if index % 97 == 0:
            words.append(str(rng.randint(1, 999)))  # a few texts with digits
        durations.append(seconds)
        paths.append(f"/workspace/data/wavs/clip_{index:06d}.wav")
        texts.append(list(" ".join(words).capitalize() + "."))
    schema = pa.schema(
        [("audio_path", pa.string()), ("text", pa.list_(pa.string())), ("duration", pa.float64())]
    )
    table = pa.table([paths, texts, durations], schema=schema)
    with pa.OSFile(str(folder / "raw.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=1000)  # datasets' ArrowWriter writes batches of 1000 rows
    (folder / "duration.json").write_text(json.dumps({"duration": durations}), encoding="utf-8")
    vocab = sorted({token for text in texts for token in text})
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")


def measure(mode: str, folder: Path) -> dict[str, float]:
    root = str(Path(__file__).resolve().parents[1])
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFLIGHT_")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(folder), root],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-readiness-") as name:
        folder = Path(name)
        make_dataset(folder, args.clips)
        size_mb = (folder / "raw.arrow").stat().st_size / 1e6
        rounds = [(measure("baseline", folder), measure("readiness", folder)) for _ in range(args.rounds)]
    base_s = statistics.median(b["seconds"] for b, _ in rounds)
    check_s = statistics.median(r["seconds"] for _, r in rounds)
    base_mb = max(b["peak_mb"] for b, _ in rounds)
    check_mb = max(r["peak_mb"] for _, r in rounds)
    ratio = statistics.median(r["seconds"] / b["seconds"] for b, r in rounds)
    print(f"dataset: {args.clips} clips, raw.arrow {size_mb:.1f} MB; checks: {rounds[-1][1]['result']}")
    print(f"read duration.json + raw.arrow text  median {base_s:6.3f} s  peak {base_mb:6.1f} MB  (baseline)")
    print(
        f"readiness checks                     median {check_s:6.3f} s  peak {check_mb:6.1f} MB  "
        f"({ratio:.1f}x the baseline)"
    )
    verdict = "PASS" if check_s < TARGET_S and check_mb < TARGET_MB else "FAIL"
    print(f"target < {TARGET_S:g} s and < {TARGET_MB:g} MB: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
