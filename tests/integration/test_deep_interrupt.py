"""SIGINT and SIGTERM at random moments of a real `preflight validate --deep` on a large file: every run ends.

The deep check hashes members on several threads; an interrupt lands in the main thread at any point of it
(waiting for results, in a signal handler, while the threads read). Whatever the moment, the process must
end within a bound with the documented exit code, and leave no traceback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entrypoint.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from tests import ckpt_factory

torch = pytest.importorskip("torch", reason="the deep check is run on a real torch.save file")
pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]
TRIES = 30
PASSES = 4  # the same file validated several times in one run: a long deep check from one file
END_WITHIN_S = 5.0  # normally a few milliseconds; a deadlock never ends


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid pretrained-style checkpoint of about 400 MB in many members, as F5-TTS's are."""
    path = tmp_path_factory.mktemp("large") / "pretrained_model.pt"
    _model, _optimizer, ema, _scheduler = ckpt_factory._built("tiny", ckpt_factory.DEFAULT_VOCAB_SIZE)
    weights = dict(ema)
    generator = torch.Generator().manual_seed(0)
    for n in range(50):  # 8 MB each
        weights[f"ema_model.extra.{n}.weight"] = torch.rand((2048, 1024), generator=generator)
    torch.save({"ema_model_state_dict": weights}, path)
    return path


def _start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "entrypoint", "validate", "--deep", *[str(path)] * PASSES],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_signals_at_random_moments_of_a_deep_check_always_end(large_checkpoint: Path) -> None:
    started = time.monotonic()
    whole = _start(large_checkpoint)
    out, err = whole.communicate(timeout=120)
    duration = time.monotonic() - started
    assert whole.returncode == 0, err.decode()
    assert out.decode().count("OK ") == PASSES

    rng = random.Random(20261202)
    interrupted = 0
    for attempt in range(TRIES):
        signum = (signal.SIGINT, signal.SIGTERM)[attempt % 2]
        process = _start(large_checkpoint)
        # From early in the interpreter's start to the end of the last pass.
        time.sleep(rng.uniform(0.1, 1.0) * duration)
        sent = time.monotonic()
        process.send_signal(signum)
        try:
            _out, err = process.communicate(timeout=END_WITHIN_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"try {attempt}: {signum.name} left `preflight validate --deep` running")
        ended_after = time.monotonic() - sent
        assert ended_after < END_WITHIN_S
        text = err.decode()
        if process.returncode == 0:
            continue  # the signal came after the last pass
        interrupted += 1
        if "preflight:" in text:  # the CLI's own handling had started
            expected = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED
            # Python itself sometimes ends a process that handled a Ctrl-C by re-raising SIGINT.
            assert process.returncode in (expected, -signum), text
            assert "Traceback" not in text, text
        elif "init_import_site" in text:
            # Ctrl-C while CPython itself imports `site`, before any of our code: CPython's own fatal error.
            assert process.returncode == 1, text
        else:  # still starting the interpreter: the default action of the signal
            assert process.returncode in (-signum, EXIT_INTERRUPTED, EXIT_TERMINATED), text
    assert interrupted >= TRIES // 2  # the moments did fall inside the runs
