"""The full image (torch, torchaudio, torchcodec, f5-tts, FFmpeg) built from the Dockerfile's default target,
then a few real F5-TTS training updates inside it on the CPU, started by the image's own entrypoint.

Opt-in (`--run-full-image`, or `make test-image`): it downloads the trainer's wheels (several GB, the CUDA
build of torch) into a wheelhouse, builds an image of about 10 GB (both removed afterwards) and trains
for a minute. The build installs only from the wheelhouse; FFmpeg and libpython come from the Debian
mirror, so the build uses the host network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container.conftest import (
    APP_UID,
    FULL_TAG,
    LIMIT_ARGS,
    PREFLIGHT_PINS,
    ROOT,
    RUNTIME_ARGS,
    build_context,
    image_id,
    podman,
)

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.trainer]
UPDATES = 4


@pytest.fixture(scope="module")
def full_image(
    request: pytest.FixtureRequest, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The full image, removed again afterwards with its wheelhouse (together about 14 GB)."""
    if not request.config.getoption("--run-full-image"):
        pytest.skip("opt-in: pass --run-full-image (or run `make test-image`)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*PREFLIGHT_PINS, *project["optional-dependencies"]["trainer"]]
    started = time.monotonic()
    context = build_context(tmp_path_factory.mktemp("context-full"), pins)
    downloaded = time.monotonic()
    previous = image_id(FULL_TAG)
    podman(
        "build",
        *RUNTIME_ARGS,
        *LIMIT_ARGS,
        "--network",
        "host",
        "--file",
        str(context / "docker" / "Dockerfile"),
        "--target",
        "full",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--build-arg",
        "WHEELHOUSE=wheelhouse",
        "--tag",
        FULL_TAG,
        str(context),
        timeout=3600,
    )
    built = time.monotonic()
    if previous is not None and previous != image_id(FULL_TAG):
        podman("rmi", previous, check=False)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", FULL_TAG).stdout.strip())
    wheelhouse = sum(path.stat().st_size for path in (context / "wheelhouse").iterdir())
    shutil.rmtree(context / "wheelhouse")
    print(
        f"\nfull image: wheelhouse {wheelhouse / 1e9:.2f} GB in {downloaded - started:.0f} s, "
        f"build {built - downloaded:.0f} s, image {size / 1e9:.2f} GB"
    )
    yield FULL_TAG
    podman("rmi", FULL_TAG, check=False)


def test_imports_and_ffmpeg_in_the_image(full_image: str) -> None:
    probe = (
        "import torch, torchaudio, torchcodec, f5_tts, json, shutil; "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'ffmpeg': shutil.which('ffmpeg')}))"
    )
    done = podman(
        "run", "--rm", *RUNTIME_ARGS, *LIMIT_ARGS, "--entrypoint", "python", full_image, "-c", probe
    )
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["torch"].startswith("2.9.1") and facts["cuda"] == "12.8", facts
    assert facts["ffmpeg"], facts


def test_a_few_training_updates_on_the_cpu(full_image: str, tmp_path: Path) -> None:
    pytest.importorskip("f5_tts", reason="the dataset is prepared on the host with F5-TTS's own script")
    from tests.trainer_data import load_checkpoint, tiny_settings
    from tools.demo import make_synthetic_dataset

    source = tmp_path / "source"
    dataset = make_synthetic_dataset(source)
    data = tmp_path / "data"
    for name in ("output", "backups", "logs"):
        (data / name).mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{APP_UID}:{APP_UID}", str(data)], check=True)
    values = tiny_settings(
        dataset, data, max_updates=UPDATES, last_every_updates=2, backup_every_updates=2, dataloader_workers=1
    )
    values.update(
        {
            "OUTPUT_DIR": "/workspace/data/output",
            "BACKUP_DIR": "/workspace/data/backups",
            "LOG_DIR": "/workspace/data/logs",
            "DATASET_DIR": "/workspace/data/dataset",
            "REQUIRE_GPU": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
    )
    values.pop("TORCH_THREADS", None)
    env_args = [arg for key, value in values.items() for arg in ("--env", f"{key}={value}")]
    started = time.monotonic()
    done = subprocess.run(
        [
            "podman",
            "run",
            "--rm",
            "--init",
            *RUNTIME_ARGS,
            *LIMIT_ARGS,
            "--cpus=1.5",
            "--shm-size=512m",
            "--volume",
            f"{data / 'output'}:/workspace/data/output",
            "--volume",
            f"{data / 'backups'}:/workspace/data/backups",
            "--volume",
            f"{data / 'logs'}:/workspace/data/logs",
            "--volume",
            f"{dataset}:/workspace/data/dataset:ro",
            # F5-TTS's prepared raw.arrow names each wav by its absolute path at preparation time.
            "--volume",
            f"{source}:{source}:ro",
            *env_args,
            full_image,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\n{UPDATES} updates of the tiny preset in the full image: {elapsed:.0f} s (preflight included)")

    log = (data / "logs" / "training.log").read_text(encoding="utf-8")
    assert f"Stopped by MAX_UPDATES={UPDATES} at update {UPDATES}" in log
    saved = load_checkpoint(data / "output" / "model_last.pt")
    assert saved["update"] == UPDATES
    report = json.loads((data / "output" / "preflight" / "report.json").read_text())
    assert report["cpu"]["usable_exact"] == pytest.approx(1.5) and report["cpu"]["workers"] == 1
    # output and backups are two bind mounts of one host file system, as with compose.yaml's defaults:
    # the backup must still be made (a hard link across mount points fails with EXDEV; a copy does not).
    backups = sorted(path.name for path in (data / "backups").glob("model_*.pt"))
    assert f"model_{UPDATES}.pt" in backups, "\n".join(
        line for line in log.splitlines() if "backup" in line.lower()
    )
