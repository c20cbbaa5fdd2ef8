"""`make demo` (`python -m tools.demo`): the incident this project exists for, caught and repaired, on the CPU.

Real F5-TTS training of the `tiny` preset on a few synthetic clips prepared with F5-TTS's own
prepare_csv_wavs, driven by the real `preflight run`, step by step:
1. train a few updates from scratch; 2. resume; 3. cut model_last.pt to a third, as the truncated copy of the
original incident was cut: it is quarantined (bytes kept) and training resumes from the newest valid
checkpoint; 4. `kill -9` the trainer while it writes a save: nothing is left corrupt; 5. ask for 16
DataLoader workers inside a real 2-CPU cgroup quota (where this machine allows one): they are clamped.
Everything lands under data/demo/.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from entrypoint import run_lock

SAMPLE_RATE = 24_000
_WORDS = ("hello", "world", "tiny", "voice", "model", "test", "sound", "check", "resume", "safe")
_DONE = ".complete"
CPU_HIERARCHY = Path("/sys/fs/cgroup/cpu")
KILL_WAIT_S = 60


def write_synthetic_wavs(folder: Path, clips: int = 8, seconds: float = 1.0, seed: int = 0) -> Path:
    """Write `clips` short 24 kHz wavs (tones plus noise) and a metadata.csv (audio_file|text) for them."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    rows = ["audio_file|text"]
    for index in range(clips):
        length = int(SAMPLE_RATE * seconds * (0.8 + 0.4 * rng.random()))
        t = np.arange(length) / SAMPLE_RATE
        audio = 0.3 * np.sin(2 * np.pi * (180 + 40 * index) * t) + 0.02 * rng.standard_normal(length)
        path = wavs / f"clip_{index:03d}.wav"
        sf.write(path, audio.astype("float32"), SAMPLE_RATE)
        rows.append(f"{path.resolve()}|" + " ".join(_WORDS[(index + k) % len(_WORDS)] for k in range(3)))
    metadata = folder / "metadata.csv"
    metadata.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return metadata


def make_synthetic_dataset(folder: Path, clips: int = 8) -> Path:
    """A prepared dataset (raw.arrow, duration.json, vocab.txt) in folder/dataset, made once and reused."""
    dataset = folder / "dataset"
    if (dataset / _DONE).is_file():
        return dataset
    metadata = write_synthetic_wavs(folder, clips)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "f5_tts.train.datasets.prepare_csv_wavs", "--pretrain"]
    command += ["--workers", "1", str(metadata), str(dataset)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0 or not (dataset / "raw.arrow").is_file():
        raise RuntimeError(f"prepare_csv_wavs failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    (dataset / _DONE).write_text("ok\n", encoding="utf-8")
    return dataset


def tiny_cpu_settings(dataset: Path, run_dir: Path) -> dict[str, str]:
    """A fast CPU run of the `tiny` preset on `dataset`, writing everything under `run_dir`."""
    return {
        "DATASET_DIR": str(dataset),
        "OUTPUT_DIR": str(run_dir / "output"),
        "BACKUP_DIR": str(run_dir / "backups"),
        "LOG_DIR": str(run_dir / "logs"),
        "MODEL_PRESET": "tiny",
        "TOKENIZER": "custom",
        "BATCH_SIZE": "2",
        "BATCH_SIZE_TYPE": "sample",
        "LEARNING_RATE": "1e-4",
        "WARMUP_UPDATES": "2",
        "LAST_EVERY_UPDATES": "2",
        "LOGGER": "none",
        "DATALOADER_WORKERS": "1",
        "ALLOW_SCRATCH": "true",
    }


def demo_settings(dataset: Path, run_dir: Path) -> dict[str, str]:
    """The tiny CPU run with numbered saves and backups."""
    return {
        **tiny_cpu_settings(dataset, run_dir),
        "SAVE_EVERY_UPDATES": "4",
        "KEEP_CHECKPOINTS": "2",
        "BACKUP_EVERY_UPDATES": "4",
        "BACKUP_KEEP": "2",
        "WAIT_TIMEOUT_S": "0",
    }


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")
    return path


class Demo:
    def __init__(self, root: Path, env_file: Path, run_dir: Path) -> None:
        self.root = root
        self.env_file = env_file
        self.output = run_dir / "output"
        self.backups = run_dir / "backups"
        self.log = run_dir / "logs" / "training.log"
        self.summary: list[tuple[str, str, str]] = []

    def environment(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_") and k != "ENV_FILE"}
        env.update(PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", **overrides)
        return env

    def preflight(self, command: str, **overrides: str) -> int:
        argv = [sys.executable, "-m", "entrypoint", command, "--env-file", str(self.env_file)]
        return subprocess.run(argv, env=self.environment(**overrides), check=False).returncode

    def report(self) -> dict:
        return json.loads((self.output / "preflight" / "report.json").read_text(encoding="utf-8"))


def step(number: int, text: str) -> None:
    print(f"\n== {number}. {text}", flush=True)


def train_and_resume(demo: Demo) -> int:
    step(1, "Train 4 updates of the tiny model from scratch: the preflight checks, then execs the trainer.")
    if demo.preflight("run", MAX_UPDATES="4"):
        return 1
    demo.summary.append(
        ("train from scratch", "4 updates, model_last.pt + model_4.pt + a backup", str(demo.output))
    )
    step(2, "Run again: the preflight picks the newest valid checkpoint and training resumes from it.")
    if demo.preflight("run", MAX_UPDATES="8"):
        return 1
    report = demo.report()
    demo.summary.append(
        ("resume", f"resumed at update {report['checkpoint']['update']}, trained to 8", str(demo.output))
    )
    return 0


def truncated_checkpoint(demo: Demo) -> int:
    last = demo.output / "model_last.pt"
    size = last.stat().st_size
    # A new file holding the first third, as an interrupted copy leaves it (truncating in place would also
    # cut the backup hard-linked to it).
    cut = last.with_name("model_last.pt.copying")
    cut.write_bytes(last.read_bytes()[: size // 3])
    os.replace(cut, last)
    step(
        3,
        f"The incident: model_last.pt cut to a third ({size // 3:,} of {size:,} bytes), as a killed copy cuts "
        "it. Stock F5-TTS dies on it ('failed finding central directory'); the preflight quarantines it.",
    )
    if demo.preflight("run", MAX_UPDATES="10"):
        return 1
    report = demo.report()
    moved = [q["moved_to"] for q in report["quarantined"] if q["moved_to"]]
    demo.summary.append(
        (
            "model_last.pt truncated",
            f"quarantined, bytes kept; resumed at update {report['checkpoint']['update']}",
            moved[0] if moved else "(nothing moved)",
        )
    )
    return 0


def _partial_save_seen(folder: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.startswith(".model_") and ".partial-" in entry.name:
                return entry.name
    return None


def kill_during_save(demo: Demo) -> int:
    step(4, "kill -9 the trainer while it writes a save (a save after every update; killed mid-write).")
    argv = [sys.executable, "-m", "entrypoint", "run", "--env-file", str(demo.env_file)]
    env = demo.environment(MAX_UPDATES="100000", LAST_EVERY_UPDATES="1")
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    caught, deadline = None, time.monotonic() + KILL_WAIT_S
    while caught is None and process.poll() is None and time.monotonic() < deadline:
        caught = _partial_save_seen(demo.output)  # polled as fast as possible to land inside a save
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    where = (
        f"while {caught} was being written" if caught else "between two saves (no save was caught in flight)"
    )
    print(f"   killed {where}", flush=True)
    # The killed trainer's DataLoader workers notice within seconds and exit; until then they hold its lock.
    deadline = time.monotonic() + KILL_WAIT_S
    while run_lock.held_by_other(demo.output) and time.monotonic() < deadline:
        time.sleep(0.5)
    print("   preflight validate --deep model_last.pt:", flush=True)
    valid = subprocess.run(
        [sys.executable, "-m", "entrypoint", "validate", "--deep", str(demo.output / "model_last.pt")],
        env=demo.environment(),
        check=False,
    ).returncode
    print("   preflight check (what the next start will do with what the kill left):", flush=True)
    demo.preflight("check")
    demo.summary.append(
        (
            "kill -9 during a save",
            "model_last.pt valid" if valid == 0 else "model_last.pt INVALID",
            str(demo.output),
        )
    )
    return 0 if valid == 0 else 1


@contextlib.contextmanager
def cpu_quota(cpus: int) -> Iterator[Path | None]:
    """A real cgroup v1 CFS quota of `cpus` CPUs, or None where this machine does not allow one."""
    folder = CPU_HIERARCHY / f"f5tts-demo-{os.getpid()}"
    try:
        folder.mkdir()
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text(str(cpus * 100000))
    except OSError:
        with contextlib.suppress(OSError):
            folder.rmdir()
        yield None
        return
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def clamp_workers(demo: Demo) -> int:
    step(
        5, "Ask for 16 DataLoader workers inside a 2-CPU quota (the seed's 16 workers on 12 cores, smaller)."
    )
    with cpu_quota(2) as cgroup:
        env = demo.environment(DATALOADER_WORKERS="16")
        argv = [sys.executable, "-m", "entrypoint", "check", "--env-file", str(demo.env_file), "--json"]
        if cgroup is None:
            print(
                "   no cgroup can be created here (needs root and a cgroup v1 cpu hierarchy): CPU_LIMIT=2 instead"
            )
            env["CPU_LIMIT"] = "2"
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        else:
            # The shell moves itself into the cgroup, then becomes the preflight: the kernel's real quota.
            shell = f'echo $$ > "{cgroup / "cgroup.procs"}" && exec "$@"'
            done = subprocess.run(
                ["sh", "-c", shell, "sh", *argv], env=env, capture_output=True, text=True, check=False
            )
    try:
        cpu = json.loads(done.stdout)["cpu"]
    except (ValueError, KeyError):
        print(done.stderr, file=sys.stderr)
        return 1
    print(
        f"   usable CPUs {cpu['usable']} ({cpu['source']}); workers {cpu['requested_workers']} -> {cpu['workers']}"
    )
    if cgroup is not None and "cgroup" not in cpu["source"]:
        print(f"   (this machine has {os.cpu_count()} CPUs: the 2-CPU quota and the CPU count agree)")
    where = "real 2-CPU cgroup quota" if cgroup is not None else "CPU_LIMIT=2 (no cgroup here)"
    demo.summary.append(("16 workers on 2 CPUs", f"clamped to {cpu['workers']} ({where})", "report.json cpu"))
    return 0


def main() -> int:
    root = Path("data/demo").resolve()
    started = time.monotonic()
    print(f"== preparing a synthetic dataset in {root / 'dataset'} (F5-TTS's prepare_csv_wavs)", flush=True)
    try:
        dataset = make_synthetic_dataset(root)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"error: could not prepare the demo dataset: {error}", file=sys.stderr)
        return 1
    run_dir = root / time.strftime("run-%Y%m%d-%H%M%S")
    env_file = write_env_file(root / "demo.env", demo_settings(dataset, run_dir))
    demo = Demo(root, env_file, run_dir)
    print(f"== settings: {env_file}; everything this run writes: {run_dir}", flush=True)
    for part in (train_and_resume, truncated_checkpoint, kill_during_save, clamp_workers):
        code = part(demo)
        if code:
            print(f"error: the demo step failed (exit {code}); see {demo.log}", file=sys.stderr)
            return code
    width = max(len(what) for what, _, _ in demo.summary)
    print(f"\n== summary ({time.monotonic() - started:.0f} s)")
    for what, happened, where in demo.summary:
        print(f"   {what:<{width}}  {happened}  [{where}]")
    print(f"   nothing was deleted; quarantined files sit next to a .json reason file. Log: {demo.log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
