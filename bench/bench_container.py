"""The image and the users' Compose commands with a real Docker Engine, in a copy of the checkout with
compose.yaml + compose.cpu.yaml and the test override (local base image, memlock, `cpus: 1.5`):

- build: cold (`--cold`: the image and Docker's build cache are removed first; about 10 minutes and the
  whole trainer stack downloaded), cached with nothing changed (the baseline), after an edit of README.md
  and after an edit of a module (the dependency layer must stay cached: the target);
- the image's size by layer (`docker history`);
- `docker compose run --rm preflight` against the same container started with `true` instead;
- `docker compose stop train` with the tiny preset training against a container that exits on SIGTERM at
  once.

python -m bench.bench_container [--cold]     (root, a Docker daemon, Compose v2; `make test` sets them up)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.container.conftest import (
    APP_UID,
    BASE_TAG,
    FULL_TAG,
    ROOT,
    UserProject,
    copy_checkout,
    machine_override,
)

DEPENDENCY_STEP = "pip install -r /tmp/requirements/requirements-trainer.txt"
SAVED = re.compile(r"Saved last checkpoint at update (\d+)")
# Where the dependency layer stays cached, a rebuild takes seconds; a reinstall of the trainer stack minutes.
REBUILD_TARGET_S = 60.0


def run(*args: str, cwd: Path | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def timed(
    action: Callable[[], subprocess.CompletedProcess[str]],
) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = action()
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{done.args} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed, done


def dependency_step_cached(output: str) -> bool:
    step = re.search(r"^#(\d+) \[[^\]]*\] RUN .*" + re.escape(DEPENDENCY_STEP), output, re.MULTILINE)
    return bool(step) and re.search(rf"^#{step.group(1)} CACHED$", output, re.MULTILINE) is not None


def build(project: UserProject) -> tuple[float, bool]:
    seconds, done = timed(lambda: project.compose("--progress", "plain", "build", "train", timeout=3600))
    return seconds, dependency_step_cached(done.stdout + done.stderr)


def build_after_edit(project: UserProject, path: Path, addition: bytes) -> tuple[float, bool]:
    original = path.read_bytes()
    try:
        path.write_bytes(original + addition)
        return build(project)
    finally:
        path.write_bytes(original)


def layers(tag: str) -> list[tuple[str, str]]:
    done = run("docker", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", tag)
    rows = [line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line]
    return [(size, " ".join(created.split())[:90]) for size, created in rows]


def prepare_dataset(project: UserProject) -> None:
    from tools.demo import write_synthetic_wavs

    metadata = write_synthetic_wavs(project.dataset, clips=8)
    metadata.write_text(
        metadata.read_text().replace(str(project.dataset.resolve()), "/workspace/data/dataset")
    )
    run("chown", "-R", f"{APP_UID}:{APP_UID}", str(project.dataset))
    timed(
        lambda: run(
            "docker", "run", "--rm", "-v", f"{project.dataset}:/workspace/data/dataset",
            "--entrypoint", "/opt/venv/bin/python", FULL_TAG, "-m", "f5_tts.train.datasets.prepare_csv_wavs",
            "--pretrain", "/workspace/data/dataset/metadata.csv", "/workspace/data/dataset",
        )
    )  # fmt: skip


def median_of(rounds: int, action: Callable[[], subprocess.CompletedProcess[str]]) -> float:
    return statistics.median(timed(action)[0] for _ in range(rounds))


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not seen within {timeout_s:.0f} s")
        time.sleep(0.5)


def train_logs(project: UserProject) -> str:
    container = project.compose("ps", "--all", "--quiet", "train").stdout.split()[0]
    done = run("docker", "logs", container)
    return done.stdout + done.stderr


def stop_seconds(project: UserProject) -> tuple[float, float]:
    """(stop of the training tiny preset, stop of a container that exits on SIGTERM at once)."""
    started = project.compose("up", "--detach", "train")
    if started.returncode != 0:
        raise SystemExit(started.stderr[-2000:])
    wait_for(lambda: len(SAVED.findall(train_logs(project))) >= 2, "two saves of model_last.pt")
    train_stop, _ = timed(lambda: project.compose("stop", "train", timeout=300))
    container = project.compose("ps", "--all", "--quiet", "train").stdout.split()[0]
    code = run("docker", "inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
    if code != "0":
        raise SystemExit(f"the train container exited {code} on docker compose stop")
    name = f"f5tts-bench-{int(time.time())}"
    probe = project.compose(
        "run", "--detach", "--name", name, "--entrypoint", "python", "preflight", "-c",
        "import signal; signal.pause()",
    )  # fmt: skip
    if probe.returncode != 0:
        raise SystemExit(probe.stderr[-2000:])
    baseline, _ = timed(lambda: run("docker", "stop", "--time", "180", name))
    run("docker", "rm", "--force", name)
    project.compose("down", "--timeout", "30")
    return train_stop, baseline


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cold", action="store_true", help="remove the image and Docker's build cache first")
    args = parser.parse_args()
    if shutil.which("docker") is None or run("docker", "info").returncode != 0:
        print("skipped: no Docker daemon answers (make test starts one as root)")
        return 0
    if run("docker", "image", "inspect", BASE_TAG).returncode != 0:
        timed(lambda: run("bash", str(ROOT / "scripts" / "make-local-base-image.sh"), BASE_TAG))
    failures = 0
    with tempfile.TemporaryDirectory(prefix="f5tts-bench-") as folder:
        root = copy_checkout(Path(folder) / "f5tts")
        (root / "compose.test.yaml").write_text(machine_override(BASE_TAG))
        project = UserProject(
            root,
            {
                "COMPOSE_FILE": "compose.yaml:compose.cpu.yaml:compose.test.yaml",
                "TRAIN_IMAGE": FULL_TAG,
                "MODEL_PRESET": "tiny",
                "TOKENIZER": "custom",
                "ALLOW_SCRATCH": "true",
                "BATCH_SIZE": "2",
                "BATCH_SIZE_TYPE": "sample",
                "WARMUP_UPDATES": "2",
                "EPOCHS": "100000",
                "LAST_EVERY_UPDATES": "2",
                "LOGGER": "none",
                "CHECKPOINT_SIZE_GB": "0.01",
                "WAIT_TIMEOUT_S": "0",
            },
        )
        for path in (
            project.output,
            project.backups,
            project.dataset,
            project.logs,
            project.data / "pretrained",
        ):
            path.mkdir(parents=True)
        run("chown", "-R", f"{APP_UID}:{APP_UID}", str(project.data))
        project.write_env()

        if args.cold:
            run("docker", "rmi", FULL_TAG)
            run("docker", "builder", "prune", "--all", "--force")
            cold, _ = build(project)
            print(f"build, cold (image and build cache removed):  {cold:7.1f} s")
        else:
            cold = None
            build(project)  # brings the image up to date with the checkout
        baseline, _ = build(project)
        readme, readme_cached = build_after_edit(project, root / "README.md", b"\nA line added.\n")
        module, module_cached = build_after_edit(project, root / "entrypoint" / "__init__.py", b"\n# edit\n")
        print(f"build, cached, nothing changed (baseline):      {baseline:7.1f} s")
        for what, seconds, cached in (
            ("README.md", readme, readme_cached),
            ("a module", module, module_cached),
        ):
            ratio = f"{seconds / baseline:.1f}x the baseline" + (
                f", {cold / seconds:.0f}x faster than cold" if cold else ""
            )
            layer = "dependency layer cached" if cached else "DEPENDENCY LAYER REBUILT"
            print(f"build after an edit of {what:10}              {seconds:7.1f} s  ({ratio}; {layer})")
            failures += (not cached) or seconds > REBUILD_TARGET_S

        inspect = json.loads(run("docker", "image", "inspect", FULL_TAG).stdout)[0]
        print(f"\nimage {FULL_TAG}: {inspect['Size'] / 1e9:.2f} GB; layers (docker history, newest first):")
        for size, created in layers(FULL_TAG):
            if size not in ("0B", "0"):
                print(f"  {size:>9}  {created}")

        prepare_dataset(project)
        preflight = median_of(3, lambda: project.compose("run", "--rm", "preflight", timeout=300))
        bare = median_of(3, lambda: project.compose("run", "--rm", "--entrypoint", "true", "preflight"))
        print(f"\ndocker compose run --rm preflight:             {preflight:7.1f} s  (median of 3)")
        print(f"  the same container running `true` (baseline): {bare:7.1f} s  ({preflight / bare:.1f}x)")
        train_stop, stop_baseline = stop_seconds(project)
        print(
            f"docker compose stop train (tiny preset):        {train_stop:7.1f} s  (exit 0, save on SIGTERM)"
        )
        print(
            f"  a container exiting at once on SIGTERM:       {stop_baseline:7.1f} s  ({train_stop / stop_baseline:.1f}x)"
        )
        project.compose("down", "--timeout", "10")
    print(
        f"target: a rebuild after a docs or code edit keeps the dependency layer and takes < {REBUILD_TARGET_S:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
