"""Readiness pieces on their own: the token table over a multi-chunk raw.arrow, the plan's arithmetic, the
vocabulary text of `vocab extend`, the audio histogram."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from entrypoint.readiness.audio_facts import histogram
from entrypoint.readiness.batch_plan import RunSettings, check_batch_plan, plan_batches
from entrypoint.readiness.dataset_facts import probe_dataset
from entrypoint.readiness.vocab_extend import extended_vocab_text
from entrypoint.readiness.vocabulary import check_coverage

pa = pytest.importorskip("pyarrow")


def write_dataset(folder: Path, texts: list[list[str]], durations: list[float], chunk: int) -> Path:
    schema = pa.schema(
        [("audio_path", pa.string()), ("text", pa.list_(pa.string())), ("duration", pa.float64())]
    )
    paths = [f"/data/clip_{i}.wav" for i in range(len(texts))]
    table = pa.table([paths, texts, durations], schema=schema)
    with pa.OSFile(str(folder / "raw.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=chunk)
    (folder / "duration.json").write_text(json.dumps({"duration": durations}))
    return folder


def test_token_table_over_many_chunks_matches_a_plain_count(tmp_path: Path) -> None:
    rng = random.Random(3)
    alphabet = [*"abcdeãçõ25 .", "zhong1", "\u0303"]
    texts = [[rng.choice(alphabet) for _ in range(rng.randint(0, 12))] for _ in range(200)]
    write_dataset(tmp_path, texts, [1.0] * len(texts), chunk=7)
    facts = probe_dataset(tmp_path)
    assert facts.text is not None and facts.text_skipped == ""
    text = facts.text
    assert text.counts == Counter(token for row in texts for token in row)
    assert text.tokens_per_row == [len(row) for row in texts]
    for token in text.counts:
        assert text.first_row[token] == next(i for i, row in enumerate(texts) if token in row)
    for wanted in ({"ã"}, {"2", "5"}, {"zhong1", "\u0303"}):
        assert text.rows_using(wanted) == sum(1 for row in texts if wanted & set(row))
    assert text.text_of(150) == "".join(texts[150])


def test_a_vocabulary_without_a_final_newline_loses_its_last_symbol(tmp_path: Path) -> None:
    write_dataset(tmp_path, [list("ab c")], [1.0], chunk=10)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(" \na\nb\nc")  # F5-TTS reads the last line minus its last character: "" instead of "c"
    result, data = check_coverage(probe_dataset(tmp_path), vocab, allow_unknown=False, extend_hint="x")
    assert result.status == "fail" and "'c' x1" in result.message and "no newline" in result.message
    assert [item["token"] for item in data["missing"]] == ["c"]


def run(**overrides: int | str) -> RunSettings:
    values: dict[str, int | str] = dict(
        batch_size=4,
        batch_size_type="sample",
        max_samples=64,
        grad_accumulation_steps=1,
        epochs=10,
        max_updates=0,
        warmup_updates=2,
        last_every_updates=7,
        save_every_updates=10,
        keep_checkpoints=3,
        backup_every_updates=0,
        backup_keep=2,
    )
    values.update(overrides)
    return RunSettings(**values)  # type: ignore[arg-type]


def test_updates_saves_and_disk_of_a_run() -> None:
    durations = [2.0] * 40  # 10 batches of 4 per epoch
    plan = plan_batches(durations, run(), 1, checkpoint_bytes=1000)
    assert (plan.updates_per_epoch, plan.scheduled_updates, plan.run_updates) == (10, 100, 100)
    assert plan.last_saves == 100 // 7 + 1  # every 7 updates, and once more at the end
    assert (plan.numbered_saves, plan.numbered_kept) == (10, 3)
    assert plan.output_bytes == 4000 and plan.backup_bytes == 0
    capped = plan_batches(
        durations, run(max_updates=25, backup_every_updates=5, grad_accumulation_steps=3), 1
    )
    assert capped.updates_per_epoch == 4 and capped.scheduled_updates == 40 and capped.run_updates == 25
    assert (capped.backups, capped.backups_kept, capped.numbered_saves) == (5, 2, 2)
    assert plan_batches(durations, run(keep_checkpoints=0), 1).numbered_saves == 0
    assert plan_batches(durations, run(keep_checkpoints=-1), 1).numbered_kept == 10


def test_warm_up_share_and_the_dropped_audio_warning() -> None:
    long_warmup = plan_batches([2.0] * 8, run(epochs=2, warmup_updates=3), 1)  # 2 updates per epoch, 4 in all
    messages = [r.message for r in check_batch_plan(long_warmup, run(epochs=2, warmup_updates=3))]
    assert long_warmup.warmup_share == 0.75 and any("warm-up" in m for m in messages)
    durations = [2.0] * 18 + [40.0, 0.1]  # the 40-s clip is most of the audio
    plan = plan_batches(durations, run(batch_size=1000, batch_size_type="frame"), 1)
    assert plan.too_long_clips == 1 and plan.out_of_range_clips == 1 and plan.kept_clips == 18
    results = check_batch_plan(plan, run(batch_size=1000, batch_size_type="frame"))
    assert any(r.status == "warn" and "never trained on" in r.message for r in results)


def test_more_processes_than_batches_fail() -> None:
    plan = plan_batches([2.0] * 3, run(batch_size=10_000, batch_size_type="frame"), 2)  # one batch, 2 GPUs
    [result] = check_batch_plan(plan, run(batch_size=10_000, batch_size_type="frame"))
    assert plan.batches == 1 and plan.batches_per_process == 0 and result.status == "fail"


def test_extended_vocabulary_keeps_the_order_and_adds_each_symbol_once() -> None:
    text, added = extended_vocab_text(" \na\nb\n", ["ç", "a", "ã", "ç", ""])
    assert added == ["ç", "ã"] and text == " \na\nb\nç\nã\n"
    text, added = extended_vocab_text(" \na", ["ç"])  # a file without a final newline gets one first
    assert text == " \na\nç\n"


def test_histogram_buckets_keep_30_s_with_the_clips_f5_tts_trains_on() -> None:
    buckets = histogram(sorted([0.1, 0.3, 0.99, 1.0, 29.9, 30.0, 30.1, 45.0]))
    by_range = {(b["from_s"], b["to_s"]): b["clips"] for b in buckets}
    assert by_range[(0.0, 0.3)] == 1 and by_range[(0.3, 1)] == 2 and by_range[(1, 2)] == 1
    assert by_range[(20, 30)] == 2 and by_range[(30, None)] == 2
    assert sum(by_range.values()) == 8
