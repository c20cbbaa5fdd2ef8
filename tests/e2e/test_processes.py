"""Two training processes on one machine without a GPU (TRAIN_PROCESSES=2 through `preflight run`): both
start, train as one process group over Gloo on their halves of the data, only rank 0 saves, and a second
start resumes both from that save."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entrypoint.naming import REPORT_DIR_NAME
from entrypoint.run_lock import LOCK_NAME
from tests.trainer_data import (
    RESUMED,
    SAVED_LAST,
    STOPPED,
    fingerprint,
    load_checkpoint,
    run_training,
    tiny_settings,
    write_settings,
)

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]
FINISHED = re.compile(r"Finished (\d+) epochs at update (\d+)")


def _run(root: Path, values: dict[str, str]) -> str:
    result = run_training(write_settings(root, values), timeout=480)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "--multi_gpu --num_processes 2" in result.stdout, result.stdout[-4000:]
    return result.stdout


def _stops(out: str) -> list[tuple[str, int]]:
    return [(match.group(1), int(match.group(2))) for match in STOPPED.finditer(out)]


def _saved_updates(out: str) -> list[int]:
    return [int(match.group(1)) for match in SAVED_LAST.finditer(out)]


def _output_files(output: Path) -> list[str]:
    # Anything else here (a .partial temp file, a second model_last.pt's leftovers) is a save that raced.
    return sorted(path.name for path in output.iterdir() if path.name != REPORT_DIR_NAME)


def test_two_processes_train_as_one_group_save_once_and_resume_together(
    dataset: Path, tmp_path: Path
) -> None:
    first = tiny_settings(dataset, tmp_path, train_processes=2, max_updates=4, last_every_updates=2)
    output = Path(first["OUTPUT_DIR"])
    out = _run(tmp_path, first)
    # Two processes ran and stopped together; each save was made once: by rank 0 alone, not by two "main"
    # processes each training on its own.
    assert _stops(out) == [("MAX_UPDATES=4", 4)] * 2, out[-4000:]
    assert _saved_updates(out) == [2, 4], out[-4000:]
    assert _output_files(output) == [LOCK_NAME, "model_last.pt"]
    saved = load_checkpoint(output / "model_last.pt")
    assert saved["update"] == 4
    expected = fingerprint(saved["model_state_dict"])

    out = _run(tmp_path, {**first, "MAX_UPDATES": "6"})
    resumed = [(m.group(1), int(m.group(2)), float(m.group(3))) for m in RESUMED.finditer(out)]
    assert len(resumed) == 2, out[-4000:]
    assert resumed[0] == resumed[1]  # every rank holds the same weights
    assert resumed[0][:2] == (str(output / "model_last.pt"), 4)
    assert resumed[0][2] == pytest.approx(expected, rel=1e-9)  # and they are the saved file's
    assert _stops(out) == [("MAX_UPDATES=6", 6)] * 2, out[-4000:]
    assert _saved_updates(out) == [6], out[-4000:]
    assert _output_files(output) == [LOCK_NAME, "model_last.pt"]
    assert load_checkpoint(output / "model_last.pt")["update"] == 6


def test_two_processes_share_the_data_and_finish_their_epochs(dataset: Path, tmp_path: Path) -> None:
    # 8 clips in batches of 2 samples: 4 batches per epoch, 2 for each process; alone, one would make 4.
    values = tiny_settings(dataset, tmp_path, train_processes=2, epochs=2, last_every_updates=2)
    out = _run(tmp_path, values)
    assert [(int(m.group(1)), int(m.group(2))) for m in FINISHED.finditer(out)] == [(2, 4)] * 2, out[-4000:]
    assert _saved_updates(out) == [2, 4], out[-4000:]
    assert _output_files(Path(values["OUTPUT_DIR"])) == [LOCK_NAME, "model_last.pt"]
