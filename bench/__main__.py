"""Run every benchmark in turn: python -m bench [--quick]. Each prints its own figures and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICK_ARGS = {
    "bench_validate": ["--size-gb", "0.5", "--repeat", "3", "--baseline-repeat", "1"],
    "bench_choose": ["--size-gb", "0.5"],
    "bench_workers": ["--rounds", "1", "--epochs", "2"],
}


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failures = 0
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = script.stem
        print(f"=== {name} ===", flush=True)
        extra = QUICK_ARGS.get(name, []) if quick else []
        failures += subprocess.run([sys.executable, "-m", f"bench.{name}", *extra]).returncode != 0
    print(f"{failures} benchmark(s) missed their target" if failures else "all benchmarks met their targets")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
