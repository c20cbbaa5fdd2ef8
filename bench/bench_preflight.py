"""`preflight check` on an empty output location: wall time, median of repeated runs, next to the floor
of starting Python at all (`python -c pass`). Target: under 300 ms.

Run: python -m bench.bench_preflight [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 300.0


def _median_ms(argv: list[str], runs: int, env: dict[str, str], cwd: Path) -> tuple[float, int]:
    times = []
    code = 0
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
        code = done.returncode
    return statistics.median(times), code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as folder:
        root = Path(folder)
        env_file = root / "bench.env"
        env_file.write_text(
            f"OUTPUT_DIR={root / 'output'}\nBACKUP_DIR={root / 'backups'}\nLOG_DIR={root / 'logs'}\n"
            f"DATASET_DIR={root / 'dataset'}\nALLOW_SCRATCH=true\n"
        )
        for name in ("output", "backups", "logs", "dataset"):
            (root / name).mkdir()
        (root / "dataset" / "raw.arrow").write_bytes(b"arrow")
        (root / "dataset" / "duration.json").write_text('{"duration": []}')
        (root / "dataset" / "vocab.txt").write_text(" \na\n")
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFLIGHT_")}
        floor_ms, _ = _median_ms([sys.executable, "-c", "pass"], args.runs, env, root)
        check_ms, code = _median_ms(
            [sys.executable, "-m", "entrypoint", "check", "--env-file", str(env_file)], args.runs, env, root
        )
    verdict = "PASS" if check_ms < TARGET_MS else "FAIL"
    print(f"python -c pass          median {floor_ms:7.1f} ms  (floor)")
    print(
        f"preflight check         median {check_ms:7.1f} ms  exit {code}  ({check_ms / floor_ms:.1f}x the floor)"
    )
    print(f"target < {TARGET_MS:.0f} ms: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
