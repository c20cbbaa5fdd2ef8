"""Quarantine: a rename plus a reason file; bytes unchanged, nothing overwritten, links moved as links."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import entrypoint
import entrypoint.checkpoints.quarantine as quarantine_module
from entrypoint.checkpoints.quarantine import (
    free_name,
    planned_destination,
    quarantine,
    quarantine_destination,
    rename_no_replace,
)
from tests.mounts import bind_mount


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_file(folder: Path, name: str = "model_last.pt", size: int = 4096) -> Path:
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def test_rename_in_place_keeps_bytes_and_writes_reason(tmp_path: Path) -> None:
    bad = _bad_file(tmp_path)
    digest = _sha(bad)
    before = bad.stat()
    result = quarantine(bad, "truncated: central directory missing", "structure")
    assert result.error is None
    assert result.moved_to == tmp_path / "model_last.pt.corrupted"
    assert not bad.exists()
    assert _sha(result.moved_to) == digest
    assert result.moved_to.stat().st_ino == before.st_ino  # a rename, not a copy
    reason = json.loads((tmp_path / "model_last.pt.corrupted.json").read_text())
    assert reason["cause"] == "truncated: central directory missing"
    assert reason["failed_level"] == "structure"
    assert reason["size"] == 4096
    assert reason["mtime_ns"] == before.st_mtime_ns
    assert reason["preflight_version"] == entrypoint.__version__
    assert reason["file"] == str(bad) and reason["moved_to"] == str(result.moved_to)
    assert reason["quarantined_at"].endswith("Z") and "ctime" in reason


def test_never_overwrites_an_earlier_quarantined_file(tmp_path: Path) -> None:
    earlier = _bad_file(tmp_path, "model_last.pt.corrupted")
    earlier_digest = _sha(earlier)
    (tmp_path / "model_last.pt.corrupted.1.json").write_text("{}")  # a reason file alone also takes the name
    bad = _bad_file(tmp_path)
    digest = _sha(bad)
    result = quarantine(bad, "bad", "integrity")
    assert result.moved_to == tmp_path / "model_last.pt.corrupted.2"
    assert _sha(earlier) == earlier_digest
    assert _sha(result.moved_to) == digest
    assert (tmp_path / "model_last.pt.corrupted.2.json").is_file()


def test_rename_no_replace_refuses_an_existing_name(tmp_path: Path) -> None:
    src, dst = _bad_file(tmp_path, "a"), _bad_file(tmp_path, "b")
    digest = _sha(dst)
    with pytest.raises(FileExistsError):
        rename_no_replace(src, dst)
    assert src.exists() and _sha(dst) == digest


def test_planned_destination_changes_nothing(tmp_path: Path) -> None:
    bad = _bad_file(tmp_path)
    target, note = planned_destination(bad, None)
    assert target == tmp_path / "model_last.pt.corrupted" and note == ""
    assert sorted(os.listdir(tmp_path)) == ["model_last.pt"]


def test_quarantine_dir_on_same_file_system(tmp_path: Path) -> None:
    qdir = tmp_path / "quarantine"
    qdir.mkdir()
    bad = _bad_file(tmp_path)
    result = quarantine(bad, "bad", "schema", quarantine_dir=qdir)
    assert result.moved_to == qdir / "model_last.pt.corrupted"
    assert (qdir / "model_last.pt.corrupted.json").is_file()
    assert result.note == ""


def _other_device_dir(tmp_path: Path) -> Path | None:
    """A folder on another file system than tmp_path, if this machine has one we may write to."""
    here = tmp_path.stat().st_dev
    for candidate in ("/dev/shm", "/run", "/tmp"):
        folder = Path(candidate)
        if folder.is_dir() and os.access(folder, os.W_OK) and folder.stat().st_dev != here:
            return folder
    return None


def test_quarantine_dir_on_another_file_system_falls_back_in_place(tmp_path: Path) -> None:
    other = _other_device_dir(tmp_path)
    if other is None:
        pytest.skip("no writable folder on another file system than tmp_path here")
    bad = _bad_file(tmp_path)
    folder, note = quarantine_destination(bad, other)
    assert folder == tmp_path and "another file system" in note
    result = quarantine(bad, "bad", "structure", quarantine_dir=other)
    assert result.moved_to == tmp_path / "model_last.pt.corrupted"
    assert "renamed in place" in result.note


def test_symlink_is_moved_as_a_link_and_its_target_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = _bad_file(outside, "weights.pt")
    digest = _sha(target)
    link = tmp_path / "model_last.pt"
    link.symlink_to(target)
    result = quarantine(link, "bad", "structure")
    assert result.moved_to is not None and result.moved_to.is_symlink()
    assert os.readlink(result.moved_to) == str(target)
    assert target.exists() and _sha(target) == digest
    assert not os.path.lexists(link)


def test_dangling_link_and_directory_can_be_moved(tmp_path: Path) -> None:
    dangling = tmp_path / "model_5.pt"
    dangling.symlink_to(tmp_path / "gone.pt")
    folder = tmp_path / "model_last.pt"
    folder.mkdir()
    (folder / "inside").write_text("kept")
    assert quarantine(dangling, "dangling", "structure").moved_to == tmp_path / "model_5.pt.corrupted"
    moved = quarantine(folder, "directory", "structure").moved_to
    assert moved == tmp_path / "model_last.pt.corrupted"
    assert (moved / "inside").read_text() == "kept"


def test_free_name_counts_up(tmp_path: Path) -> None:
    assert free_name(tmp_path, "x.pt") == tmp_path / "x.pt.corrupted"
    (tmp_path / "x.pt.corrupted").write_text("")
    assert free_name(tmp_path, "x.pt") == tmp_path / "x.pt.corrupted.1"


def test_missing_file_is_an_error_not_an_exception(tmp_path: Path) -> None:
    result = quarantine(tmp_path / "nope.pt", "bad", "structure")
    assert result.moved_to is None and result.error


def test_quarantine_dir_missing_or_not_a_folder_renames_in_place_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    bad = _bad_file(tmp_path)
    digest = _sha(bad)
    result = quarantine(bad, "bad", "structure", quarantine_dir=missing)
    assert result.moved_to == tmp_path / "model_last.pt.corrupted" and _sha(result.moved_to) == digest
    assert f"QUARANTINE_DIR {missing} does not exist" in result.note and "renamed in place" in result.note
    assert not result.into_quarantine_dir

    a_file = tmp_path / "quarantine-is-a-file"
    a_file.write_text("not a folder")
    other = _bad_file(tmp_path, "model_100.pt")
    result = quarantine(other, "bad", "structure", quarantine_dir=a_file)
    # Without the folder check the rename went into "a_file/..." and failed (ENOTDIR): the file stayed.
    assert result.error is None and result.moved_to == tmp_path / "model_100.pt.corrupted"
    assert f"QUARANTINE_DIR {a_file} is not a folder" in result.note
    assert a_file.read_text() == "not a folder"


def test_a_move_into_quarantine_dir_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "quarantine"
    folder.mkdir()
    result = quarantine(_bad_file(tmp_path), "bad", "structure", quarantine_dir=folder)
    assert result.error is None and result.into_quarantine_dir and result.note == ""
    assert result.moved_to == folder / "model_last.pt.corrupted"


@pytest.fixture
def bound_quarantine(tmp_path: Path) -> Iterator[Path]:
    """QUARANTINE_DIR as Compose makes it from its own volume line: a bind mount of a folder on the same disk."""
    with bind_mount(tmp_path / "quarantine-on-disk", tmp_path / "quarantine") as mount_point:
        yield mount_point


def test_quarantine_dir_bind_mounted_from_the_same_disk_falls_back_in_place(
    tmp_path: Path, bound_quarantine: Path
) -> None:
    output = tmp_path / "output"
    output.mkdir()
    bad = _bad_file(output)
    digest = _sha(bad)
    assert bad.stat().st_dev == bound_quarantine.stat().st_dev  # the same-file-system test cannot tell
    folder, note = quarantine_destination(bad, bound_quarantine)
    assert folder == output and "separate mount" in note and "renamed in place" in note
    planned, _note = planned_destination(bad, bound_quarantine)
    assert planned == output / "model_last.pt.corrupted"
    result = quarantine(bad, "bad", "structure", quarantine_dir=bound_quarantine)
    assert result.error is None and result.moved_to == output / "model_last.pt.corrupted"
    assert _sha(result.moved_to) == digest and result.reason_file is not None and result.reason_file.exists()
    assert "separate mount" in result.note and not bad.exists()


def test_exdev_at_rename_time_falls_back_in_place(
    tmp_path: Path, bound_quarantine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without /proc (a container that does not mount it) the mount cannot be seen beforehand: the rename's
    # EXDEV is then the signal.
    monkeypatch.setattr(quarantine_module, "MOUNTINFO", tmp_path / "no-proc" / "mountinfo")
    output = tmp_path / "output"
    output.mkdir()
    bad = _bad_file(output)
    folder, note = quarantine_destination(bad, bound_quarantine)
    assert folder == bound_quarantine and note == ""
    result = quarantine(bad, "bad", "structure", quarantine_dir=bound_quarantine)
    assert result.error is None and result.moved_to == output / "model_last.pt.corrupted"
    assert "separate mount" in result.note and not result.into_quarantine_dir
    assert result.reason_file is not None and json.loads(result.reason_file.read_text())["cause"] == "bad"


def test_a_folder_inside_the_same_bind_mount_is_used(tmp_path: Path, bound_quarantine: Path) -> None:
    bad = _bad_file(bound_quarantine)
    inside = bound_quarantine / "quarantine"
    inside.mkdir()
    result = quarantine(bad, "bad", "structure", quarantine_dir=inside)
    assert result.moved_to == inside / "model_last.pt.corrupted" and result.note == ""
