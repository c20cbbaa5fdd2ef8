"""Hostile checkpoint files against the validator's budgets: time and peak memory of each verdict.

    python -m bench.bench_hostile

Each file is validated (deep) in a child process, as the preflight would meet it, next to the same run on a
real F5-TTS training checkpoint (the baseline). Target: every hostile file gets its "invalid" verdict in
under 20 s and under 512 MB peak RSS, whatever the attack (unbounded, the same files cost minutes to hours,
gigabytes, a SIGSEGV or a hang).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests import hostile
from tests.hostile import RawMember

TARGET_SECONDS = 20.0  # 5,000,000 opcodes take 5 s on a quiet 2-core machine, twice that on a busy one
TARGET_RSS_MB = 512.0
FLOOD_BYTES = 60 << 20  # just under the 64 MiB data.pkl budget: the most work a pickle can ask for


def _files(folder: Path) -> dict[str, Path]:
    from tests.ckpt_factory import make_training_checkpoint

    def archive(name: str, pickle: bytes) -> Path:
        (folder / name).mkdir()
        return hostile.torch_like_zip(folder / name / "x.pt", pickle)

    bomb = hostile.deflate_bomb(6 << 30)
    (folder / "bomb").mkdir()
    st_folder = folder / "st"
    st_folder.mkdir()
    deep_json = st_folder / "deep.safetensors"
    deep_json.write_bytes(
        hostile.safetensors_bytes(hostile.one_tensor_header(x="[" * 10_000_000 + "]" * 10_000_000), b"\0" * 8)
    )
    return {
        "baseline: real training checkpoint": make_training_checkpoint(folder / "model_100.pt", update=100),
        "dict key nested 1,000,000 deep": archive("deep", hostile.deep_tuple_key_pickle(1_000_000)),
        "dict key shared 2^60 times": archive("shared", hostile.shared_tuple_key_pickle(60)),
        "60 MB of MARK": archive("marks", hostile.PROTO2 + hostile.MARK * FLOOD_BYTES + hostile.STOP),
        "60 MB of EMPTY_DICT": archive(
            "dicts", hostile.PROTO2 + hostile.EMPTY_DICT * FLOOD_BYTES + hostile.STOP
        ),
        "60 MB of NONE": archive("nones", hostile.PROTO2 + hostile.NONE * FLOOD_BYTES + hostile.STOP),
        "zip bomb: 6 GB in 6 MB": hostile.write_zip(
            folder / "bomb" / "x.pt",
            [RawMember("x/data.pkl", bomb, method=8, size=len(bomb)), RawMember("x/version", b"3\n")],
        ),
        "shape of 4,000 2040-bit ints": archive(
            "shape", hostile.tensor_pickle([2**2039 - 1] * 4000, [2**2039 - 1] * 4000)
        ),
        "safetensors JSON 10,000,000 deep": deep_json,
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        files = _files(Path(tmp))
        print(f"{'file':<36} {'size':>9} {'seconds':>8} {'peak RSS':>9}  verdict")
        missed = 0
        baseline_rss = 0.0
        for label, path in files.items():
            run = hostile.validate_isolated([path], deep=True, memory_bytes=4 << 30, timeout=600)
            if run.failure():
                print(f"{label:<36} FAILED: {run.failure()}")
                missed += 1
                continue
            row = run.verdicts[str(path)]
            seconds, rss = float(row["seconds"]), float(row["peak_rss_mb"])
            size_mb = path.stat().st_size / 1e6
            verdict = "valid" if row["valid"] else f"invalid: {str(row['cause'])[:60]}"
            if label.startswith("baseline"):
                baseline_rss = rss
            ratio = (
                f" ({rss / baseline_rss:.1f}x baseline)"
                if baseline_rss and not label.startswith("baseline")
                else ""
            )
            print(f"{label:<36} {size_mb:>7.1f}MB {seconds:>8.2f} {rss:>7.0f}MB  {verdict}{ratio}")
            if not label.startswith("baseline") and (
                row["valid"] or seconds > TARGET_SECONDS or rss > TARGET_RSS_MB
            ):
                missed += 1
    print(f"target: every hostile file invalid in < {TARGET_SECONDS:g} s and < {TARGET_RSS_MB:g} MB peak RSS")
    print("missed" if missed else "met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
