"""Real containers with podman (no Docker engine is needed): a locally bootstrapped Debian base image, the
project's Dockerfile built on it from a wheelhouse prepared on the host, and helpers to run it with the
limits a training container gets (CPU quota, small /dev/shm, non-root user).

Every test here is skipped, with the reason, where podman cannot run containers. The base image is cached
between test runs under its tag; `podman rmi localhost/f5tts-test-base:bookworm` forces a new one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/f5tts-test-base:bookworm"
SLIM_TAG = "localhost/f5tts-train:slim-test"
FULL_TAG = "localhost/f5tts-train:full-test"
APP_UID = 1000
# Needed on hosts like the CI machines: crun refuses their hybrid cgroup layout, and raising resource
# limits above the host's is not permitted.
RUNTIME_ARGS = ("--runtime", "runc")
LIMIT_ARGS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
_PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
# What the slim image installs: the preflight's pinned dependencies and what builds the project.
PREFLIGHT_PINS = (*_PYPROJECT["project"]["dependencies"], *_PYPROJECT["build-system"]["requires"])
CONTEXT_FILES = ("pyproject.toml", "README.md", "entrypoint", "docker", ".dockerignore")


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done


def debian_mirror() -> str:
    """The machine's own Debian mirror (deb822 or one-line sources), else deb.debian.org."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file():
        match = re.search(r"^URIs:\s*(\S+)", deb822.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    one_line = Path("/etc/apt/sources.list")
    if one_line.is_file():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", one_line.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Debian bookworm image with python3, python3-venv and ca-certificates (no registry is needed)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/install-system-deps.sh installs it)")
    if podman("image", "exists", BASE_TAG, check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip("debootstrap is not installed: cannot make a base image without a registry")
        rootfs = tmp_path_factory.mktemp("rootfs")
        done = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                debian_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(
                f"debootstrap could not build a base image (exit {done.returncode}): {done.stderr[-300:]}"
            )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE_TAG], stdin=tar.stdout, capture_output=True)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
        if imported.returncode != 0:
            pytest.skip(f"podman import failed: {imported.stderr.decode()[-300:]}")
    probe = podman("run", "--rm", *RUNTIME_ARGS, *LIMIT_ARGS, BASE_TAG, "true", check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {probe.stderr.strip()[-300:]}")
    return BASE_TAG


def build_context(folder: Path, requirements: Sequence[str]) -> Path:
    """The project's build context plus a wheelhouse of `requirements` downloaded on the host, so the
    build itself needs no network (the air-gapped path of the Dockerfile)."""
    for name in CONTEXT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, folder / name)
    if not (folder / "README.md").exists():
        (folder / "README.md").write_text("F5-TTS fine-tuning container\n")
    wheelhouse = folder / "wheelhouse"
    wheelhouse.mkdir()
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse), *requirements],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if download.returncode != 0:
        pytest.skip(f"cannot fill the wheelhouse from the package index: {download.stderr.strip()[-300:]}")
    return folder


def _build(context: Path, base: str, target: str, tag: str, timeout: float) -> None:
    podman(
        "build",
        *RUNTIME_ARGS,
        *LIMIT_ARGS,
        "--file",
        str(context / "docker" / "Dockerfile"),
        "--target",
        target,
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        "WHEELHOUSE=wheelhouse",
        "--build-arg",
        f"APP_UID={APP_UID}",
        "--build-arg",
        f"APP_GID={APP_UID}",
        "--tag",
        tag,
        str(context),
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def slim_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = build_context(tmp_path_factory.mktemp("context-slim"), PREFLIGHT_PINS)
    build_image(context, base_image, "slim", SLIM_TAG)
    return SLIM_TAG


def image_id(tag: str) -> str | None:
    done = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def build_image(context: Path, base: str, target: str, tag: str, timeout: float = 600) -> None:
    """Build `target` as `tag`; the image the tag named before is removed, so test runs do not pile up
    untagged images."""
    previous = image_id(tag)
    _build(context, base, target, tag, timeout)
    if previous is not None and previous != image_id(tag):
        podman("rmi", previous, check=False)


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


def wait_for_file(path: Path, container: str, timeout_s: float = 90) -> None:
    """Wait for `path` to appear, failing early with the logs when the container has exited."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        state = podman("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
        if state == "false" and not path.exists():
            logs = podman("logs", container, check=False)
            pytest.fail(
                f"the container exited before writing {path.name}:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout_s:.0f} s")
        time.sleep(0.2)


def first_json(text: str) -> dict[str, Any]:
    start = text.index("{")
    return json.JSONDecoder().raw_decode(text[start:])[0]
