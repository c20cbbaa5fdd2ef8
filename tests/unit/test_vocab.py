"""The preflight's shape check and the trainer's model count the vocabulary with one reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint.checks.dataset import check_dataset
from entrypoint.handoff import read_handoff
from entrypoint.train.driver import vocabulary
from entrypoint.vocab import read_vocabulary
from tests.trainer_data import tiny_settings, write_handoff_for


def test_a_form_feed_inside_a_symbol_gives_the_same_count_to_preflight_and_trainer(tmp_path: Path) -> None:
    # F5-TTS iterates the file in text mode: lines end at "\n" only. str.splitlines would also split at the
    # form feed and count 4 entries where the model gets 3 rows.
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name in ("raw.arrow", "duration.json"):
        (dataset / name).write_bytes(b"x")
    vocab_file = dataset / "vocab.txt"
    vocab_file.write_text(" \na\x0cb\nc\n", encoding="utf-8")

    _result, preflight_count = check_dataset(dataset, vocab_file)
    handoff = read_handoff(write_handoff_for(tiny_settings(dataset, tmp_path), None, tmp_path / "preflight"))
    trainer_vocabulary = vocabulary(handoff)

    assert len(trainer_vocabulary) == 3
    assert preflight_count == len(trainer_vocabulary)
    assert trainer_vocabulary == read_vocabulary(vocab_file) == {" ": 0, "a\x0cb": 1, "c": 2}


def test_a_fifo_named_like_the_vocabulary_is_refused_not_waited_on(tmp_path: Path) -> None:
    import os

    from entrypoint.checks.dataset import check_dataset
    from entrypoint.vocab import read_vocabulary

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "raw.arrow").write_bytes(b"arrow")
    (dataset / "duration.json").write_text('{"duration": [1.0]}')
    os.mkfifo(dataset / "vocab.txt")  # no writer: a plain open() would block forever
    with pytest.raises(OSError):
        read_vocabulary(dataset / "vocab.txt")
    result, size = check_dataset(dataset, dataset / "vocab.txt")
    assert result.status == "fail" and size is None and "cannot be read" in result.message
