"""Verdict cache: an unchanged file is not read again; any change, a new question or a bad cache is a miss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from entrypoint.checkpoints.cache import CACHE_FILE_NAME, FORMAT_VERSION, VerdictCache, cached
from entrypoint.checkpoints.validate import Expectation, validate_file
from tests.ckpt_templates import CountingValidator, build_templates, place


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_templates(tmp_path_factory.mktemp("templates"))


def test_unchanged_file_is_answered_from_the_cache_across_runs(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    ckpt = place(templates["100"], tmp_path / "model_last.pt")
    cache_path = tmp_path / "preflight" / CACHE_FILE_NAME
    counting = CountingValidator()
    cache = VerdictCache.load(cache_path)
    first = cached(counting, cache)(ckpt, deep=True)
    assert first.valid and counting.calls == [("model_last.pt", True)]
    assert not cache_path.exists()  # written only when saved
    assert cache.save() is None
    counting.calls.clear()
    again = cached(counting, VerdictCache.load(cache_path))(ckpt, deep=True)
    assert counting.calls == []
    assert again.valid and again.update == 100 and again.levels == first.levels


def test_any_change_invalidates(tmp_path: Path, templates: dict[str, Path]) -> None:
    ckpt = place(templates["100"], tmp_path / "model_last.pt")
    cache = VerdictCache(tmp_path / "cache.json")
    counting = CountingValidator()
    check = cached(counting, cache)
    check(ckpt)
    check(ckpt)
    assert len(counting.calls) == 1
    # Same size, same mtime set back: ctime still changes, so the rewrite is seen.
    before = ckpt.stat()
    place(templates["200"], ckpt)
    os.utime(ckpt, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert ckpt.stat().st_size == before.st_size
    verdict = check(ckpt)
    assert len(counting.calls) == 2 and verdict.update == 200
    with open(ckpt, "ab") as handle:
        handle.write(b"\0")
    check(ckpt)
    assert len(counting.calls) == 3


def test_depth_and_expectation_are_part_of_the_question(tmp_path: Path, templates: dict[str, Path]) -> None:
    ckpt = place(templates["100"], tmp_path / "model_5.pt")
    cache = VerdictCache(tmp_path / "cache.json")
    counting = CountingValidator()
    check = cached(counting, cache)
    check(ckpt, deep=False)
    check(ckpt, deep=True)  # a valid quick verdict does not answer a deep question
    check(ckpt, deep=False)  # the deep verdict answers the quick one
    assert counting.calls == [("model_5.pt", False), ("model_5.pt", True)]
    check(ckpt, deep=False, expect=Expectation("tiny", 32))
    assert len(counting.calls) == 3


def test_an_invalid_quick_verdict_answers_a_deep_question(tmp_path: Path, templates: dict[str, Path]) -> None:
    ckpt = place(templates["100"], tmp_path / "model_5.pt")
    os.truncate(ckpt, 100_000)
    counting = CountingValidator()
    check = cached(counting, VerdictCache(tmp_path / "cache.json"))
    assert not check(ckpt, deep=False).valid
    assert not check(ckpt, deep=True).valid
    assert len(counting.calls) == 1


@pytest.mark.parametrize("content", [b"not json at all", b'{"format": 99, "entries": {}}', b"\xff\xfe\x00"])
def test_garbage_cache_is_ignored_with_a_warning(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / CACHE_FILE_NAME
    path.write_bytes(content)
    cache = VerdictCache.load(path)
    assert cache.entries == {}
    assert len(cache.warnings) == 1 and str(path) in cache.warnings[0]


def test_unreadable_cache_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE_NAME
    path.mkdir()  # reading a directory fails like an unreadable file, even for root
    cache = VerdictCache.load(path)
    assert cache.entries == {} and "cannot be read" in cache.warnings[0]


def test_save_is_atomic_and_failures_are_warnings(tmp_path: Path, templates: dict[str, Path]) -> None:
    ckpt = place(templates["100"], tmp_path / "model_last.pt")
    cache = VerdictCache(tmp_path / "preflight" / CACHE_FILE_NAME)
    assert cache.save() is None and not cache.path.exists()  # nothing changed: nothing written
    cached(validate_file, cache)(ckpt)
    assert cache.save() is None
    data = json.loads(cache.path.read_text())
    assert data["format"] == FORMAT_VERSION and len(data["entries"]) == 1
    assert os.listdir(cache.path.parent) == [CACHE_FILE_NAME]  # no temp file left behind
    blocked = VerdictCache(tmp_path / "model_last.pt" / CACHE_FILE_NAME)  # parent is a file
    cached(validate_file, blocked)(ckpt)
    warning = blocked.save()
    assert warning is not None and "not written" in warning


def test_the_cache_keeps_every_file_of_a_large_folder_for_the_next_run(tmp_path: Path) -> None:
    files = []
    for number in range(1, 1201):  # more than any fixed entry count would keep
        path = tmp_path / "output" / f"model_{number}.pt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"PK\x03\x04" + number.to_bytes(4, "little") * 64)  # cut off: invalid, quickly
        files.append(path)
    cache_path = tmp_path / "preflight" / CACHE_FILE_NAME
    first = CountingValidator()
    run_cache = VerdictCache.load(cache_path)
    check = cached(first, run_cache)
    verdicts = [check(path) for path in files]
    assert len(first.calls) == len(files) and run_cache.save() is None
    second = CountingValidator()
    again = cached(second, VerdictCache.load(cache_path))
    assert [again(path) for path in files] == verdicts
    assert second.calls == []  # every file answered from the cache


def test_entries_of_files_no_longer_asked_about_are_bounded(tmp_path: Path) -> None:
    from entrypoint.checkpoints.cache import MAX_UNUSED_ENTRIES

    cache_path = tmp_path / CACHE_FILE_NAME
    cache = VerdictCache.load(cache_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    for number in range(MAX_UNUSED_ENTRIES + 100):
        path = gone / f"model_{number}.pt"
        path.write_bytes(b"x")
        cached(validate_file, cache)(path)
    assert cache.save() is None
    current = tmp_path / "model_last.pt"
    current.write_bytes(b"y")
    later = VerdictCache.load(cache_path)  # a later run that sees only one file
    cached(validate_file, later)(current)
    assert later.save() is None
    assert len(VerdictCache.load(cache_path).entries) == MAX_UNUSED_ENTRIES + 1
