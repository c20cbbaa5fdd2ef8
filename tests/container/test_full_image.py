"""The full image (torch, torchaudio, torchcodec, f5-tts, FFmpeg) as `docker compose build train` makes it
in the users' checkout: built by the engine's built-in Dockerfile frontend (no frontend image to pull), with
the trainer stack importable, and a dependency layer that a change of the docs or the code leaves cached."""

from __future__ import annotations

import json
import re

import pytest

from tests.container.conftest import BuildFacts, UserProject, docker

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.trainer]

DEPENDENCY_STEP = "pip install -r /tmp/requirements/requirements-trainer.txt"


# The first test to ask for the image builds it: cold, that downloads the trainer stack.
@pytest.mark.timeout(3600)
def test_imports_and_ffmpeg_in_the_image(full_image: BuildFacts) -> None:
    probe = (
        "import torch, torchaudio, torchcodec, f5_tts, json, shutil; "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'ffmpeg': shutil.which('ffmpeg')}))"
    )
    done = docker("run", "--rm", "--entrypoint", "python", full_image.tag, "-c", probe)
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["torch"].startswith("2.9.1") and facts["cuda"] == "12.8", facts
    assert facts["ffmpeg"], facts


def dependency_step_cached(build_output: str) -> bool:
    """Whether BuildKit's plain progress output reports the dependency step as CACHED."""
    step = re.search(r"^#(\d+) \[[^\]]*\] RUN .*" + re.escape(DEPENDENCY_STEP), build_output, re.MULTILINE)
    assert step, build_output[-3000:]
    return re.search(rf"^#{step.group(1)} CACHED$", build_output, re.MULTILINE) is not None


def test_a_change_to_the_docs_or_the_code_keeps_the_dependency_layer(
    user_project: UserProject, full_image: BuildFacts
) -> None:
    readme = user_project.root / "README.md"
    module = user_project.root / "entrypoint" / "__init__.py"
    originals = {path: path.read_bytes() for path in (readme, module)}
    try:
        readme.write_bytes(originals[readme] + b"\nA line added by a user.\n")
        module.write_bytes(originals[module] + b"\n# an edit\n")
        done = user_project.compose("--progress", "plain", "build", "train", timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        assert dependency_step_cached(done.stdout + done.stderr)
    finally:
        for path, content in originals.items():
            path.write_bytes(content)
    done = user_project.compose("--progress", "plain", "build", "train", timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
