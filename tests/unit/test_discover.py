"""Discovery: candidates in priority order, and what cannot be a checkpoint found on the way. Only names and
stat() matter here, so the files hold arbitrary bytes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.checkpoints.discover import Candidate, discover

ALL = ("last", "numbered", "backups", "pretrained")


def _touch(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    output, backups = tmp_path / "output", tmp_path / "backups"
    output.mkdir()
    backups.mkdir()
    return output, backups


def _names(candidates: tuple[Candidate, ...]) -> list[tuple[str, str]]:
    return [(c.source, c.path.name) for c in candidates]


def test_priority_order_of_all_sources(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    output, backups = dirs
    for name in ("model_last.pt", "model_50.pt", "model_1000.pt", "model_200.safetensors", "model_200.pt"):
        _touch(output / name)
    for name in ("model_900.pt", "model_1100.pt"):
        _touch(backups / name)
    _touch(output / "pretrained_base.pt")
    source = _touch(tmp_path / "hub" / "model_1200000.safetensors")
    found = discover(ALL, output, backups, source)
    assert _names(found.candidates) == [
        ("last", "model_last.pt"),
        ("numbered", "model_1000.pt"),
        ("numbered", "model_200.pt"),
        ("numbered", "model_200.safetensors"),
        ("numbered", "model_50.pt"),
        ("backups", "model_1100.pt"),
        ("backups", "model_900.pt"),
        ("pretrained", "model_1200000.safetensors"),
        ("pretrained", "pretrained_base.pt"),
    ]
    assert [c.update_hint for c in found.candidates[1:5]] == [1000, 200, 200, 50]
    pretrained = found.candidates[-2]
    assert pretrained.path == source and not pretrained.movable  # the user's file is never ours to move
    assert found.findings == () and found.temps == ()


def test_sources_setting_orders_and_filters(dirs: tuple[Path, Path]) -> None:
    output, backups = dirs
    _touch(output / "model_last.pt")
    _touch(output / "model_10.pt")
    _touch(backups / "model_20.pt")
    found = discover(("backups", "last"), output, backups, None)
    assert _names(found.candidates) == [("backups", "model_20.pt"), ("last", "model_last.pt")]


def test_folder_copy_of_the_pretrained_file_first_in_stock_mode(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    output, backups = dirs
    source = _touch(tmp_path / "hub" / "model_1200000.pt")
    _touch(output / "pretrained_model_1200000.pt")
    _touch(output / "pretrained_other.pt")
    plain = discover(("pretrained",), output, backups, source)
    stock = discover(("pretrained",), output, backups, source, folder_copy_first=True)
    assert [c.path.name for c in plain.candidates] == [
        "model_1200000.pt",
        "pretrained_model_1200000.pt",
        "pretrained_other.pt",
    ]
    assert [c.path.name for c in stock.candidates] == [
        "pretrained_model_1200000.pt",
        "model_1200000.pt",
        "pretrained_other.pt",
    ]


def test_a_folder_copy_that_is_the_source_itself_is_listed_once(dirs: tuple[Path, Path]) -> None:
    output, backups = dirs
    source = _touch(output / "pretrained_base.pt")
    found = discover(("pretrained",), output, backups, source)
    assert [c.path for c in found.candidates] == [source]


def test_links_loops_directories_and_fifos_are_findings(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    output, backups = dirs
    (output / "model_last.pt").mkdir()
    (output / "model_30.pt").symlink_to(output / "missing.pt")
    (output / "model_20.pt").symlink_to(output / "model_20.pt")
    os.mkfifo(output / "model_10.pt")
    target = _touch(tmp_path / "elsewhere" / "weights.pt", size=123)
    (output / "model_5.pt").symlink_to(target)
    found = discover(ALL, output, backups, None)
    problems = {f.path.name: f.problem for f in found.findings}
    assert problems == {
        "model_last.pt": "directory",
        "model_30.pt": "dangling-link",
        "model_20.pt": "link-loop",
        "model_10.pt": "not-a-file",
    }
    assert all(f.movable for f in found.findings)
    assert "missing.pt" in next(f.detail for f in found.findings if f.problem == "dangling-link")
    details = {f.path.name: f.detail for f in found.findings}
    # The words end up in the reason file and the report: they must say what the entry is.
    assert details["model_last.pt"].endswith("is a folder, not a file")
    assert f"is a dangling symlink to {output / 'missing.pt'}" in details["model_30.pt"]
    assert details["model_20.pt"].endswith("is a symlink loop")
    assert "FIFO" in details["model_10.pt"]
    (link,) = found.candidates
    assert link.path.name == "model_5.pt" and link.link_target == target and link.size == 123


def test_missing_pretrained_setting_is_reported_not_moved(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    output, backups = dirs
    found = discover(("pretrained",), output, backups, tmp_path / "nowhere.pt")
    (finding,) = found.findings
    assert finding.problem == "missing" and not finding.movable
    assert "PRETRAINED_CHECKPOINT" in finding.detail


def test_temp_files_are_listed_with_their_final_name(dirs: tuple[Path, Path]) -> None:
    output, backups = dirs
    _touch(output / ".model_last.pt.partial-123-0a1b2c3d", size=7)
    _touch(output / ".model_500.pt.partial-124-deadbeef")
    _touch(output / ".pretrained_base.pt.partial-125-00ff00ff")
    _touch(output / ".report.json.partial-126-abcdef12")  # not a checkpoint: not ours to judge here
    _touch(backups / ".model_400.pt.partial-127-12345678")
    found = discover(ALL, output, backups, None)
    temps = {t.path.name: (t.source, t.final.name, t.pid) for t in found.temps}
    assert temps == {
        ".model_last.pt.partial-123-0a1b2c3d": ("last", "model_last.pt", 123),
        ".model_500.pt.partial-124-deadbeef": ("numbered", "model_500.pt", 124),
        ".pretrained_base.pt.partial-125-00ff00ff": ("pretrained", "pretrained_base.pt", 125),
        ".model_400.pt.partial-127-12345678": ("backups", "model_400.pt", 127),
    }
    assert found.candidates == ()  # temp names are never candidates by themselves
    only_last = discover(("last",), output, backups, None)
    assert [t.final.name for t in only_last.temps] == ["model_last.pt"]


def test_strays_that_f5_would_consider(dirs: tuple[Path, Path]) -> None:
    output, backups = dirs
    for name in ("model_best.pt", "weights.safetensors", "model_7.pt", "notes.txt", "model_last.pt"):
        _touch(output / name)
    found = discover(ALL, output, backups, None)
    assert sorted(p.name for p in found.strays) == ["model_best.pt", "weights.safetensors"]


def test_missing_folders_give_nothing(tmp_path: Path) -> None:
    found = discover(ALL, tmp_path / "no-output", tmp_path / "no-backups", None)
    assert found.candidates == () and found.findings == () and found.temps == ()


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="discover-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_unreadable_file_is_a_finding_that_is_never_moved(shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    output = shared_dir / "output"
    output.mkdir()
    output.chmod(0o755)
    secret = _touch(output / "model_last.pt")
    secret.chmod(0o600)
    _touch(output / "model_10.pt").chmod(0o644)
    # The effective user only, and only around the call: root can switch back.
    os.setegid(65534)
    os.seteuid(65534)
    try:
        found = discover(("last", "numbered"), output, None, None)
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert [(f.path.name, f.problem, f.movable) for f in found.findings] == [
        ("model_last.pt", "unreadable", False)
    ]
    assert "permission denied" in found.findings[0].detail
    assert [c.path.name for c in found.candidates] == ["model_10.pt"]
