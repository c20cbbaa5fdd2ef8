"""Backup of model_last.pt on the same file system (a hard link) vs copying the file, at several sizes.

Each size: a real checkpoint file of random fp32 data is written once; then `make_backup` (hard link under a
temp name, rename, folder fsync, quick validation) and, as the baseline measured in the same run, a durable
copy of the same file (shutil.copyfile + fsync). Target: the backup takes < 50 ms whatever the size.

Run: python -m bench.bench_backup [--sizes-gb 0.1,1.0] [--repeat 5] [--dir bench/out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TARGET_MS = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", default="0.1,1.0")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()

    from bench.bench_save import make_state
    from entrypoint.train.backups import make_backup
    from entrypoint.train.checkpoint_manager import CheckpointWriter

    args.dir.mkdir(parents=True, exist_ok=True)
    worst_ms = 0.0
    for size_gb in (float(part) for part in args.sizes_gb.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.dir))
        try:
            output, backups = folder / "output", folder / "backups"
            last = CheckpointWriter(output, log=print).save(make_state(size_gb), "model_last.pt").path
            size = last.stat().st_size
            link_ms, copy_ms = [], []
            for update in range(1, args.repeat + 1):
                start = time.perf_counter()
                result = make_backup(last, backups, update)
                link_ms.append((time.perf_counter() - start) * 1000)
                assert result.made and result.method == "hard link", result.message
                start = time.perf_counter()
                copy = folder / f"copy-{update}.pt"
                shutil.copyfile(last, copy)
                fd = os.open(copy, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                copy_ms.append((time.perf_counter() - start) * 1000)
                copy.unlink()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        link, copied = statistics.median(link_ms), statistics.median(copy_ms)
        worst_ms = max(worst_ms, max(link_ms))
        print(
            f"{size / 1e9:6.2f} GB: hard-link backup median {link:7.2f} ms (max {max(link_ms):.2f}); "
            f"durable copy median {copied:8.1f} ms; copy / backup = {copied / link:.0f}x"
        )
    verdict = "met" if worst_ms < TARGET_MS else "MISSED"
    print(f"slowest backup {worst_ms:.2f} ms (target < {TARGET_MS:.0f} ms at every size): {verdict}")
    return 0 if worst_ms < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
