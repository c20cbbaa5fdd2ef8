"""Real containers with the users' own tools, Docker Engine and Docker Compose v2: a locally bootstrapped
Debian base image (no registry is needed), the project's Dockerfile built on it by BuildKit's built-in
frontend, and helpers to run it with the limits a training container gets.

`make test` starts a Docker daemon when none runs (scripts/docker-engine.sh). Every test here is skipped,
with the reason, where no daemon answers. The base image and the images built from it stay in Docker's
cache between test runs under their tags, so a second run rebuilds only what changed;
`docker rmi localhost/f5tts-test-base:bookworm` forces a new base.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/f5tts-test-base:bookworm"
SLIM_TAG = "localhost/f5tts-train:slim-test"
FULL_TAG = "localhost/f5tts-train:full-test"
APP_UID = 1000
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the slim image installs: the preflight's pinned dependencies and what builds the project.
SLIM_PINS = (*_PYPROJECT["project"]["dependencies"], *_PYPROJECT["build-system"]["requires"])
# compose.yaml asks for an unlimited memlock; hosts that cannot raise it (like the test machines) refuse the
# container with "error setting rlimit type 8: operation not permitted". 8 MiB is what they allow.
TEST_MEMLOCK = 8388608
# What a user's checkout holds for building and running the image.
CHECKOUT_FILES = (
    "pyproject.toml",
    "README.md",
    "entrypoint",
    "docker",
    ".dockerignore",
    "compose.yaml",
    "compose.cpu.yaml",
    "compose.multinode.yaml",
    "Makefile",
    ".env.example",
)


def docker(
    *args: str, timeout: float = 600, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done


@pytest.fixture(scope="session")
def engine() -> None:
    """A Docker daemon that answers and the Compose v2 plugin."""
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed (scripts/install-system-deps.sh installs docker.io)")
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no Docker daemon answers (make test starts one as root): {info.stderr.strip()[-300:]}")
    version = docker("compose", "version", "--short", check=False, timeout=60)
    if version.returncode != 0 or not version.stdout.strip().startswith("2."):
        pytest.skip(
            "Docker Compose v2 is not installed as a CLI plugin (scripts/docker-engine.sh installs it)"
        )


@pytest.fixture(scope="session")
def base_image(engine: None) -> str:
    """A Debian bookworm image with python3, python3-venv, ca-certificates and the machine's certificate
    authorities for pip, imported from a debootstrap tree (scripts/make-local-base-image.sh)."""
    if docker("image", "inspect", BASE_TAG, check=False).returncode == 0:
        return BASE_TAG
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed: cannot make a base image without a registry")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-local-base-image.sh"), BASE_TAG],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"no local base image (exit {done.returncode}): {done.stderr[-2000:]}"
    return BASE_TAG


def write_env(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")


def compose_command(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`docker compose ARGS` in `project`, as a user runs it from their checkout."""
    return docker("compose", *args, timeout=timeout, check=False, cwd=project)


@pytest.fixture(scope="session")
def slim_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Dockerfile's slim target (the preflight alone) built by Compose the air-gapped way: every wheel
    from a wheelhouse in the build context (WHEELHOUSE=wheelhouse), and no network in the build."""
    context = copy_checkout(tmp_path_factory.mktemp("slim-build") / "f5tts")
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(context / "wheelhouse"),
            *SLIM_PINS,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert download.returncode == 0, f"cannot fill the wheelhouse: {download.stderr.strip()[-2000:]}"
    (context / "compose.slim.yaml").write_text(
        json.dumps(
            {
                "services": {
                    "slim": {
                        "build": {
                            "context": ".",
                            "dockerfile": "docker/Dockerfile",
                            "target": "slim",
                            "network": "none",
                            "args": {
                                "BASE_IMAGE": base_image,
                                "WHEELHOUSE": "wheelhouse",
                                "APP_UID": str(APP_UID),
                            },
                        },
                        "image": SLIM_TAG,
                    }
                }
            }
        )
    )
    done = docker(
        "compose", "-f", "compose.slim.yaml", "build", "slim", timeout=900, check=False, cwd=context
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SLIM_TAG


def machine_override(base_image: str) -> str:
    """What this machine lacks, and only that: a local base image and a memlock limit it can grant. The
    1.5-CPU limit is what a user adds to share a machine; it makes the CPU quota visible to the preflight."""
    return f"""# Test machine only: a local base image (no registry) and the memlock limit the host allows.
services:
  train:
    build:
      args:
        BASE_IMAGE: {base_image}
    cpus: 1.5
    ulimits:
      memlock: {TEST_MEMLOCK}
  preflight:
    cpus: 1.5
    ulimits:
      memlock: {TEST_MEMLOCK}
"""


@dataclass
class UserProject:
    """A copy of the checkout a user works in, with its .env and data folders."""

    root: Path
    settings: dict[str, str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def output(self) -> Path:
        return self.data / "output"

    @property
    def backups(self) -> Path:
        return self.data / "backups"

    @property
    def dataset(self) -> Path:
        return self.data / "dataset"

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    def write_env(self, **overrides: str) -> None:
        write_env(self.root / ".env", {**self.settings, **overrides})

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return compose_command(self.root, *args, timeout=timeout)


def copy_checkout(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)
    return target


def new_user_project(root: Path, base_image: str, **settings: str) -> UserProject:
    """A checkout in `root` with a .env selecting compose.yaml + compose.cpu.yaml + the test override, and
    data folders owned by APP_UID (created first: compose.yaml refuses to create missing host folders);
    `settings` add to or replace the .env's values."""
    copy_checkout(root)
    (root / "compose.test.yaml").write_text(machine_override(base_image))
    values = {
        "COMPOSE_FILE": "compose.yaml:compose.cpu.yaml:compose.test.yaml",
        "TRAIN_IMAGE": FULL_TAG,
        # Host paths, as .env.example has them; compose.yaml mounts them and pins the container's own.
        "OUTPUT_DIR": "data/output",
        "BACKUP_DIR": "data/backups",
        "DATASET_DIR": "data/dataset",
        "LOG_DIR": "data/logs",
        "PRETRAINED_DIR": "data/pretrained",
        "APP_UID": str(APP_UID),
        "APP_GID": str(APP_UID),
        **settings,
    }
    project = UserProject(root, values)
    for folder in (
        project.output,
        project.backups,
        project.dataset,
        project.logs,
        project.data / "pretrained",
    ):
        folder.mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{APP_UID}:{APP_UID}", str(project.data)], check=True)
    project.write_env()
    return project


@pytest.fixture(scope="session")
def user_project(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserProject]:
    """The user's checkout (new_user_project), taken down at the end of the test session."""
    project = new_user_project(tmp_path_factory.mktemp("checkout") / "f5tts", base_image)
    yield project
    project.compose("down", "--timeout", "10")


@dataclass
class BuildFacts:
    tag: str
    seconds: float
    output: str


@pytest.fixture(scope="session")
def full_image(user_project: UserProject) -> BuildFacts:
    """`docker compose build train` in the user's checkout: once per test run, on Docker's layer cache
    (a cold build downloads torch and F5-TTS, about 10 minutes; a cached one takes seconds)."""
    started = time.monotonic()
    done = user_project.compose("build", "train", timeout=3000)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\nfull image: docker compose build train took {elapsed:.0f} s")
    return BuildFacts(FULL_TAG, elapsed, done.stdout + done.stderr)


@dataclass
class Mounts:
    """Host folders a training container mounts, laid out as compose.yaml mounts them."""

    root: Path

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


VALID_UPDATE = 100
TRUNCATED_UPDATE = 200
VOCAB_SIZE = 32


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    """output/ with one valid numbered checkpoint and a newer, truncated model_last.pt; a dataset the
    dataset check accepts; all owned by the container's user (a bind mount keeps host ownership)."""
    pytest.importorskip("torch", reason="the checkpoints are real torch.save files")
    from tests.ckpt_factory import make_training_checkpoint, truncate

    layout = Mounts(tmp_path / "data")
    for folder in (layout.output, layout.backups, layout.dataset, layout.logs):
        folder.mkdir(parents=True)
    make_training_checkpoint(
        layout.output / f"model_{VALID_UPDATE}.pt", update=VALID_UPDATE, vocab_size=VOCAB_SIZE
    )
    last = make_training_checkpoint(
        layout.output / "model_last.pt", update=TRUNCATED_UPDATE, vocab_size=VOCAB_SIZE
    )
    truncate(last, last.stat().st_size // 2)
    (layout.dataset / "raw.arrow").write_bytes(b"\0" * 1024)
    (layout.dataset / "duration.json").write_text(json.dumps({"duration": [1.0]}))
    (layout.dataset / "vocab.txt").write_text("".join(f"{chr(97 + i % 26)}{i}\n" for i in range(VOCAB_SIZE)))
    subprocess.run(["chown", "-R", f"{APP_UID}:{APP_UID}", str(layout.root)], check=True)
    yield layout
    # Files the container's user created are removed by pytest's tmp_path cleanup (we run as root here).


def container_env(mounts: Mounts) -> dict[str, str]:
    """The settings the container gets, as compose.yaml pins them, for the tiny preset on the CPU."""
    return {
        "OUTPUT_DIR": "/workspace/data/output",
        "BACKUP_DIR": "/workspace/data/backups",
        "DATASET_DIR": "/workspace/data/dataset",
        "LOG_DIR": "/workspace/data/logs",
        "MODEL_PRESET": "tiny",
        "REQUIRE_GPU": "false",
        "DATALOADER_WORKERS": "8",
        "CPU_RESERVE": "1",
        "SHM_PER_WORKER_MB": "256",
        "CHECKPOINT_SIZE_GB": "0.001",
        "WAIT_TIMEOUT_S": "0",
    }


def volume_args(mounts: Mounts) -> list[str]:
    return [
        "--volume",
        f"{mounts.output}:/workspace/data/output",
        "--volume",
        f"{mounts.backups}:/workspace/data/backups",
        "--volume",
        f"{mounts.dataset}:/workspace/data/dataset:ro",
        "--volume",
        f"{mounts.logs}:/workspace/data/logs",
    ]


# The "trainer": records who it is, then waits for a signal and records which one arrived.
PROBE = """
import json, os, signal, sys
out = os.environ["OUTPUT_DIR"]
def stop(signum, frame):
    with open(os.path.join(out, "probe-signal.txt"), "w") as f:
        f.write(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
facts = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "gid": os.getgid(),
         "workers": os.environ.get("PREFLIGHT_WORKERS"), "cwd": os.getcwd()}
with open(os.path.join(out, ".probe.tmp"), "w") as f:
    json.dump(facts, f)
os.rename(os.path.join(out, ".probe.tmp"), os.path.join(out, "probe.json"))
while True:
    signal.pause()
"""


def container_running(container: str) -> bool:
    return (
        docker("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip() == "true"
    )


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float, on_timeout: Callable[[], str] = lambda: ""
) -> None:
    """Poll `condition` until it holds; fail naming `what` (and whatever `on_timeout` adds) after
    `timeout_s`. A deadline on an observable condition, not a sleep standing in for one."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout_s:.0f} s\n{on_timeout()}")
        time.sleep(0.25)


def wait_for_file(path: Path, container: str, timeout_s: float = 90) -> None:
    """Wait for `path` to appear, failing early with the logs when the container has exited."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if not container_running(container) and not path.exists():
            logs = docker("logs", container, check=False)
            pytest.fail(
                f"the container exited before writing {path.name}:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout_s:.0f} s")
        time.sleep(0.2)


def first_json(text: str) -> dict[str, Any]:
    start = text.index("{")
    return json.JSONDecoder().raw_decode(text[start:])[0]


SAVED = re.compile(r"Saved last checkpoint at update (\d+)")
RESUMED = re.compile(r"Resuming from (\S+) at update (\d+) \(weights fingerprint ([^)]+)\)")
# compose.yaml's stop_grace_period: Docker sends SIGKILL after it.
GRACE_PERIOD_S = 180
# The tiny preset on the CPU, a save every 2 updates and a numbered one every 4, backups every 4, and
# epochs enough that the run never ends by itself during the test.
TINY_TRAINING = {
    "MODEL_PRESET": "tiny",
    "TOKENIZER": "custom",
    "ALLOW_SCRATCH": "true",
    "BATCH_SIZE": "2",
    "BATCH_SIZE_TYPE": "sample",
    "LEARNING_RATE": "1e-4",
    "WARMUP_UPDATES": "2",
    "EPOCHS": "100000",
    "LAST_EVERY_UPDATES": "2",
    "SAVE_EVERY_UPDATES": "4",
    "KEEP_CHECKPOINTS": "-1",
    "BACKUP_EVERY_UPDATES": "4",
    "LOGGER": "none",
    "DATALOADER_WORKERS": "8",
    "CHECKPOINT_SIZE_GB": "0.01",
    "WAIT_TIMEOUT_S": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}
CLIPS = 8


class TrainService:
    """The `train` service's container as `docker compose` and `docker` show it."""

    def __init__(self, project: UserProject) -> None:
        self.project = project

    def container(self) -> str:
        ids = self.project.compose("ps", "--all", "--quiet", "train").stdout.split()
        assert len(ids) == 1, ids
        return ids[0]

    def inspect(self) -> dict[str, Any]:
        return json.loads(docker("inspect", self.container()).stdout)[0]

    def logs(self) -> str:
        done = docker("logs", self.container(), check=False)
        return done.stdout + done.stderr

    def saved(self) -> list[int]:
        return [int(update) for update in SAVED.findall(self.logs())]

    def resumed(self) -> list[tuple[str, int]]:
        return [(found[1], int(found[2])) for found in RESUMED.finditer(self.logs())]

    def tail(self) -> str:
        return self.logs()[-4000:]

    def wait_for_saves(self, count: int, timeout_s: float = 300) -> list[int]:
        wait_until(
            lambda: len(self.saved()) >= count, f"{count} saves of model_last.pt", timeout_s, self.tail
        )
        return self.saved()

    def wait_for_resumes(self, count: int, timeout_s: float = 300) -> tuple[str, int]:
        wait_until(lambda: len(self.resumed()) >= count, f"resume number {count}", timeout_s, self.tail)
        return self.resumed()[count - 1]

    def stop(self) -> float:
        started = time.monotonic()
        done = self.project.compose("stop", "train", timeout=GRACE_PERIOD_S + 60)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        state = self.inspect()["State"]
        assert state["ExitCode"] == 0, (state, self.tail())
        return elapsed

    def up(self) -> None:
        done = self.project.compose("up", "--detach", "train")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def readme_prepare_command() -> str:
    """The README's `docker run ... prepare_csv_wavs` command, continuation lines joined."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.strip().startswith("docker run") and "dataset" in line
    )
    command = []
    for line in lines[start:]:
        command.append(line.strip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    text = " ".join(command)
    assert "prepare_csv_wavs" in text, text
    return text


def prepare_dataset(project: UserProject, image: str, clips: int = CLIPS) -> None:
    """Synthetic wavs and a metadata.csv naming them by their container path, then the README's command."""
    from tools.demo import write_synthetic_wavs

    metadata = write_synthetic_wavs(project.dataset, clips=clips)
    host_prefix = str(project.dataset.resolve())
    metadata.write_text(metadata.read_text().replace(host_prefix, "/workspace/data/dataset"))
    subprocess.run(["chown", "-R", f"{APP_UID}:{APP_UID}", str(project.dataset)], check=True)
    # The README names the default image tag; the tests build theirs under a tag of their own.
    command = readme_prepare_command().replace("f5tts-train:local", image)
    done = subprocess.run(
        ["bash", "-c", command], cwd=project.root, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("raw.arrow", "duration.json", "vocab.txt"):
        assert (project.dataset / name).is_file(), name
