"""SIGTERM mid-training: the update in progress finishes, model_last.pt is saved at it, exit 0; a second
signal during that save changes nothing."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

from entrypoint.naming import temp_target
from tests.trainer_data import (
    SAVED_LAST,
    STOPPED,
    load_checkpoint,
    start_training,
    tiny_settings,
    wait_for_line,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]


def test_sigterm_saves_model_last_at_current_update_and_exits_zero(dataset: Path, tmp_path: Path) -> None:
    # No MAX_UPDATES and many epochs: only the signal can end this run.
    values = tiny_settings(dataset, tmp_path, max_updates=0, epochs=10_000, last_every_updates=3)
    process = start_training(write_settings(tmp_path, values), values)
    seen: list[str] = []
    try:
        first_save = int(wait_for_line(process, SAVED_LAST, seen).group(1))
        # A seeded delay puts the signal inside a later update rather than on the save boundary.
        time.sleep(random.Random(7).uniform(0.2, 0.6))
        process.send_signal(signal.SIGTERM)
        # A second, different signal right behind it (the kernel would merge a second SIGTERM): it must
        # neither abort the final save nor change the exit code.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        stopped = wait_for_line(process, STOPPED, seen)
        assert process.stdout is not None
        seen += process.stdout.readlines()
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, "".join(seen)[-3000:]
    # Both signals may be pending together; the kernel delivers the lower-numbered SIGINT first.
    assert stopped.group(1) in ("SIGTERM", "SIGINT")
    update = int(stopped.group(2))
    assert update >= first_save
    output = Path(values["OUTPUT_DIR"])
    assert load_checkpoint(output / "model_last.pt")["update"] == update
    assert [p.name for p in output.iterdir() if temp_target(p.name)] == []
    text = "".join(seen)
    if update % 3:  # not an update that saves model_last.pt anyway: the stop itself saved it
        assert f"at update {update}: saving model_last.pt" in text
    assert f"Saved last checkpoint at update {update}" in text
    log = (Path(values["LOG_DIR"]) / "training.log").read_text(encoding="utf-8")
    assert "received again while stopping: ignored" in log
