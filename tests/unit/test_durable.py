"""The one durable-write primitive, on real files: copies (replacing or not, abortable, validated), hard
links, text files. Nothing is ever left half-written under the target name, and no temp file stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entrypoint import durable
from entrypoint.durable import CopyAborted, NotValid, copy_file, link_file, replace_text
from entrypoint.naming import temp_target


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if temp_target(p.name)]


def test_copy_replaces_the_target_with_identical_bytes(tmp_path: Path) -> None:
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    source.write_bytes(os.urandom(300_000))
    target.write_bytes(b"old")
    assert copy_file(source, target) == 300_000
    assert target.read_bytes() == source.read_bytes()
    assert _temps(tmp_path) == []


def test_copy_without_replace_refuses_an_existing_target(tmp_path: Path) -> None:
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    source.write_bytes(b"new")
    target.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        copy_file(source, target, replace=False)
    assert target.read_bytes() == b"someone else's file"
    assert _temps(tmp_path) == []
    fresh = tmp_path / "fresh.bin"
    copy_file(source, fresh, replace=False)
    assert fresh.read_bytes() == b"new"


def test_copy_onto_itself_gives_a_hard_linked_file_its_own_data(tmp_path: Path) -> None:
    # What the preflight does before F5-TTS's stock trainer rewrites a model_last.pt that a backup links to.
    last, backup = tmp_path / "model_last.pt", tmp_path / "backup.pt"
    last.write_bytes(b"weights")
    os.link(last, backup)
    copy_file(last, last)
    assert last.stat().st_nlink == 1 and backup.stat().st_nlink == 1
    last.write_bytes(b"rewritten in place")
    assert backup.read_bytes() == b"weights"


def test_copy_gives_way_to_a_stop_request_between_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "COPY_CHUNK_BYTES", 1000)
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    source.write_bytes(os.urandom(10_000))
    target.write_bytes(b"previous")
    asked: list[int] = []

    def stop_at_the_third_chunk() -> bool:
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(CopyAborted):
        copy_file(source, target, should_abort=stop_at_the_third_chunk)
    assert len(asked) == 3
    assert target.read_bytes() == b"previous"
    assert _temps(tmp_path) == []


def test_a_copy_that_fails_validation_never_takes_the_target_name(tmp_path: Path) -> None:
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    source.write_bytes(b"not what the validator wants")
    target.write_bytes(b"previous")
    with pytest.raises(NotValid, match="wrong content"):
        copy_file(source, target, validate=lambda path: (path.read_bytes() == b"good", "wrong content"))
    assert target.read_bytes() == b"previous"
    assert _temps(tmp_path) == []


def test_link_replaces_the_target_and_shares_the_data(tmp_path: Path) -> None:
    source, target = tmp_path / "model_last.pt", tmp_path / "model_3.pt"
    source.write_bytes(b"three")
    target.write_bytes(b"stale")
    link_file(source, target)
    assert target.stat().st_ino == source.stat().st_ino
    assert _temps(tmp_path) == []


def test_replace_text_leaves_the_new_text_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old", encoding="utf-8")
    replace_text(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert _temps(tmp_path) == []
