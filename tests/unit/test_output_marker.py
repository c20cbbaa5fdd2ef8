"""Machine 0's marker in OUTPUT_DIR, read back by another machine: real files, real folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from entrypoint import shared_output
from entrypoint.cluster import _fix_for


def _output_with_checkpoint(folder: Path, content: bytes = b"weights" * 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_last.pt").write_bytes(content)
    return folder


def test_the_same_folder_is_shared_and_its_checkpoint_confirmed(tmp_path: Path) -> None:
    output = _output_with_checkpoint(tmp_path / "output")
    marker = shared_output.write_marker(output, str(output / "model_last.pt"))
    seen = shared_output.look(output)
    assert seen["checkpoint"] == "model_last.pt"
    assert shared_output.compare(1, seen, marker) == (True, None)


def test_a_copy_of_the_folder_made_before_the_meeting_is_not_shared(tmp_path: Path) -> None:
    output = _output_with_checkpoint(tmp_path / "output")
    shared_output.write_marker(output, str(output / "model_last.pt"))
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)  # yesterday's rsync of machine 0's folder, marker included
    marker = shared_output.write_marker(output, str(output / "model_last.pt"))  # today's meeting
    assert shared_output.compare(1, shared_output.look(copy), marker) == (False, None)
    assert shared_output.compare(1, shared_output.look(tmp_path / "empty"), marker) == (False, None)


def test_a_shared_folder_showing_a_different_checkpoint_stops_the_machines(tmp_path: Path) -> None:
    output = _output_with_checkpoint(tmp_path / "output")
    marker = shared_output.write_marker(output, str(output / "model_last.pt"))
    # What a machine with a stale view would see: the marker, but the file as it was before the last save.
    (output / "model_last.pt").write_bytes(b"older" * 700)
    shares, problem = shared_output.compare(1, shared_output.look(output), marker)
    assert shares
    assert problem is not None
    assert problem.startswith("machine 1 shares OUTPUT_DIR with machine 0 but sees model_last.pt differently")
    assert "3,500 bytes" in problem and "7,000 bytes" in problem
    assert "own OUTPUT_DIR" in _fix_for(problem)


def test_a_checkpoint_outside_output_dir_is_not_compared(tmp_path: Path) -> None:
    output = _output_with_checkpoint(tmp_path / "output")
    pretrained = _output_with_checkpoint(tmp_path / "pretrained")
    marker = shared_output.write_marker(output, str(pretrained / "model_last.pt"))
    assert marker["checkpoint"] is None
    seen = shared_output.look(output)
    assert "checkpoint" not in seen
    assert shared_output.compare(1, seen, marker) == (True, None)
    escaping = shared_output.write_marker(output, str(output / ".." / "pretrained" / "model_last.pt"))
    assert escaping["checkpoint"] is None


def test_without_a_marker_no_machine_counts_as_sharing(tmp_path: Path) -> None:
    read_only = tmp_path / "output"
    read_only.mkdir()
    (read_only / "preflight").write_text("a file where the folder should be")
    marker = shared_output.write_marker(read_only, None)
    assert marker["token"] is None
    assert shared_output.compare(1, shared_output.look(read_only), marker) == (False, None)
