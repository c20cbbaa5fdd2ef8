"""The choice among real checkpoint files: quick levels for all, the deep level for the winner only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entrypoint.checkpoints.discover import discover
from entrypoint.checkpoints.select import (
    BLOCK_COMPATIBILITY,
    Rejection,
    blocking_kind,
    choose,
    judge_temps,
    merge_temps,
    reference_size,
    settle_unused_temps,
)
from entrypoint.checkpoints.validate import Expectation, validate_file
from entrypoint.checkpoints.verdict import Verdict
from tests.ckpt_templates import build_templates, flip_tensor_byte, place

SOURCES = ("last", "numbered", "backups", "pretrained")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_templates(tmp_path_factory.mktemp("templates"))


class Recorder:
    """check(path, deep, reference) through the real validator, remembering every call."""

    def __init__(self, expect: Expectation | None = None) -> None:
        self.calls: list[tuple[str, bool, int | None]] = []
        self.expect = expect

    def __call__(self, path: Path, deep: bool, reference: int | None) -> Verdict:
        self.calls.append((path.name, deep, reference))
        return validate_file(path, deep=deep, reference_size=reference, expect=self.expect)

    def deep_reads(self) -> list[str]:
        return [name for name, deep, _ in self.calls if deep]


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    output, backups = tmp_path / "output", tmp_path / "backups"
    output.mkdir()
    backups.mkdir()
    return output, backups


def test_first_valid_wins_and_only_the_winner_is_read_deeply(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    output, backups = _folders(tmp_path)
    os.truncate(place(templates["400"], output / "model_last.pt"), 1_000_000)
    os.truncate(place(templates["300"], output / "model_300.pt"), 2_000_000)
    place(templates["200"], output / "model_200.pt")
    place(templates["100"], backups / "model_100.pt")
    recorder = Recorder()
    rejected: list[Rejection] = []
    choice = choose(
        discover(SOURCES, output, backups, None).candidates, recorder, deep=True, on_reject=rejected.append
    )
    assert choice.candidate is not None and choice.candidate.path == output / "model_200.pt"
    assert choice.verdict is not None and choice.verdict.update == 200 and choice.verdict.passed("integrity")
    assert [r.candidate.path.name for r in rejected] == ["model_last.pt", "model_300.pt"]
    assert recorder.deep_reads() == ["model_200.pt"]
    assert "model_100.pt" not in [name for name, _, _ in recorder.calls]  # never opened
    assert choice.notes == ()  # the newer names before the winner were read and found invalid


def test_a_truncated_file_is_described_against_its_siblings(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    output, backups = _folders(tmp_path)
    os.truncate(place(templates["400"], output / "model_last.pt"), 1_000_000)
    healthy = place(templates["200"], output / "model_200.pt")
    choice = choose(discover(SOURCES, output, backups, None).candidates, Recorder(), deep=False)
    (rejection,) = choice.rejected
    assert "truncated" in rejection.verdict.cause
    assert "1.0 MB where siblings are 3.6 MB" in rejection.verdict.cause
    assert rejection.level == "quick" and choice.verdict is not None
    assert choice.candidate is not None and choice.candidate.path == healthy


def test_failing_the_deep_level_moves_on(tmp_path: Path, templates: dict[str, Path]) -> None:
    output, backups = _folders(tmp_path)
    flip_tensor_byte(place(templates["400"], output / "model_last.pt"))
    place(templates["300"], output / "model_300.pt")
    recorder = Recorder()
    choice = choose(discover(SOURCES, output, backups, None).candidates, recorder, deep=True)
    assert [(r.candidate.path.name, r.level) for r in choice.rejected] == [("model_last.pt", "deep")]
    assert "CRC" in choice.rejected[0].verdict.cause or "crc" in choice.rejected[0].verdict.cause.lower()
    assert choice.verdict is not None and choice.verdict.update == 300
    assert recorder.deep_reads() == ["model_last.pt", "model_300.pt"]
    # Without the deep level the bit flip goes unnoticed, as it does for torch.load.
    quick = choose(discover(SOURCES, output, backups, None).candidates, Recorder(), deep=False)
    assert quick.verdict is not None and quick.verdict.update == 400


def test_nothing_valid(tmp_path: Path, templates: dict[str, Path]) -> None:
    output, backups = _folders(tmp_path)
    (output / "model_last.pt").write_bytes(b"\0" * 4096)
    choice = choose(discover(SOURCES, output, backups, None).candidates, Recorder(), deep=True)
    assert choice.candidate is None and choice.verdict is None
    assert "zero" in choice.rejected[0].verdict.cause


def test_reference_size_prefers_the_previous_numbered_one(tmp_path: Path) -> None:
    output, backups = _folders(tmp_path)
    for name, size in (
        ("model_last.pt", 10),
        ("model_300.pt", 30),
        ("model_200.pt", 20),
        ("model_100.pt", 50),
    ):
        (output / name).write_bytes(b"x" * size)
    candidates = discover(SOURCES, output, backups, None).candidates
    by_name = {c.path.name: c for c in candidates}
    assert reference_size(by_name["model_300.pt"], candidates) == 20
    assert reference_size(by_name["model_last.pt"], candidates) == 50  # the largest sibling
    assert reference_size(by_name["model_100.pt"], candidates) == 30


def test_newer_name_in_a_later_source_is_noted(tmp_path: Path, templates: dict[str, Path]) -> None:
    output, backups = _folders(tmp_path)
    place(templates["100"], output / "model_last.pt")
    place(templates["300"], output / "model_300.pt")
    choice = choose(discover(SOURCES, output, backups, None).candidates, Recorder(), deep=False)
    assert choice.verdict is not None and choice.verdict.update == 100
    assert any("update 300" in note for note in choice.notes)


def test_temp_files_cut_off_complete_and_stale(tmp_path: Path, templates: dict[str, Path]) -> None:
    output, backups = _folders(tmp_path)
    place(templates["200"], output / "model_last.pt")
    cut = place(templates["400"], output / ".model_last.pt.partial-999999-0000aaaa")
    os.truncate(cut, 500_000)
    complete_newer = place(templates["300"], output / ".model_last.pt.partial-999998-0000bbbb")
    stale = place(templates["100"], output / ".model_100.pt.partial-999997-0000cccc")
    found = discover(SOURCES, output, backups, None)
    decisions = judge_temps(found.temps, Recorder(), found.candidates)
    actions = {d.temp.path.name: d.action for d in decisions}
    assert actions == {cut.name: "remove", complete_newer.name: "candidate", stale.name: "candidate"}
    merged = merge_temps(found.candidates, decisions, SOURCES)
    assert [c.path.name for c in merged][:2] == ["model_last.pt", complete_newer.name]
    assert merged[1].promote_to == output / "model_last.pt"
    choice = choose(merged, Recorder(), deep=False)
    assert choice.candidate is not None and choice.candidate.path.name == "model_last.pt"
    settled = {d.temp.path.name: d.action for d in settle_unused_temps(decisions, choice)}
    # The complete save of update 300 is newer than the chosen 200: kept. The 100 one is stale.
    assert settled == {cut.name: "remove", complete_newer.name: "keep", stale.name: "remove"}


def test_complete_temp_without_its_final_name_is_used(tmp_path: Path, templates: dict[str, Path]) -> None:
    output, backups = _folders(tmp_path)
    place(templates["100"], output / "model_100.pt")
    temp = place(templates["300"], output / ".model_last.pt.partial-999999-0000dddd")
    found = discover(SOURCES, output, backups, None)
    decisions = judge_temps(found.temps, Recorder(), found.candidates)
    merged = merge_temps(found.candidates, decisions, SOURCES)
    assert [c.path.name for c in merged] == [temp.name, "model_100.pt"]  # where model_last.pt would be
    choice = choose(merged, Recorder(), deep=True)
    assert choice.candidate is not None and choice.candidate.promote_to == output / "model_last.pt"
    assert choice.verdict is not None and choice.verdict.update == 300


def test_temp_of_a_live_process_is_left_alone(tmp_path: Path, templates: dict[str, Path]) -> None:
    output, backups = _folders(tmp_path)
    parent = os.getppid()  # alive, and not this process
    temp = output / f".model_last.pt.partial-{parent}-0000eeee"
    os.truncate(place(templates["100"], temp), 1000)
    found = discover(SOURCES, output, backups, None)
    recorder = Recorder()
    (decision,) = judge_temps(found.temps, recorder, found.candidates)
    assert decision.action == "keep" and str(parent) in decision.reason
    assert recorder.calls == []


def test_prefer_newest_quick_checks_all_and_deep_reads_only_the_newest(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    output, backups = _folders(tmp_path)
    place(templates["300"], output / "model_last.pt")
    place(templates["400"], output / "model_400.pt")
    place(templates["200"], backups / "model_200.pt")
    place(templates["pre_pt"], output / "pretrained_base.pt")
    candidates = discover(SOURCES, output, backups, None).candidates
    recorder = Recorder()
    choice = choose(candidates, recorder, deep=True, prefer_newest=True)
    assert choice.candidate is not None and choice.candidate.path == output / "model_400.pt"
    assert choice.verdict is not None and choice.verdict.update == 400
    assert recorder.deep_reads() == ["model_400.pt"]
    quick = [name for name, deep, _ in recorder.calls if not deep]
    assert quick == ["model_last.pt", "model_400.pt", "model_200.pt"]  # pretrained never opened
    strict = choose(candidates, Recorder(), deep=True)
    assert strict.candidate is not None and strict.candidate.path == output / "model_last.pt"


def test_prefer_newest_moves_past_a_crc_damaged_newest_and_breaks_ties_by_source_order(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    output, backups = _folders(tmp_path)
    flip_tensor_byte(place(templates["400"], backups / "model_400.pt"))
    os.truncate(place(templates["400"], output / "model_last.pt"), 1_000_000)
    place(templates["300"], backups / "model_300.pt")
    place(templates["300"], output / "model_300.pt")
    recorder = Recorder()
    choice = choose(
        discover(SOURCES, output, backups, None).candidates, recorder, deep=True, prefer_newest=True
    )
    assert choice.candidate is not None and choice.candidate.path == output / "model_300.pt"
    assert recorder.deep_reads() == ["model_400.pt", "model_300.pt"]
    assert [(r.candidate.path.name, r.level) for r in choice.rejected] == [
        ("model_last.pt", "quick"),
        ("model_400.pt", "deep"),
    ]
    backups_first = ("backups", "numbered", "last")
    again = choose(
        discover(backups_first, output, backups, None).candidates, Recorder(), deep=True, prefer_newest=True
    )
    assert again.candidate is not None and again.candidate.path == backups / "model_300.pt"


@pytest.mark.parametrize("prefer_newest", [True, False])
def test_an_incompatible_newest_file_blocks_the_choice(
    tmp_path: Path, templates: dict[str, Path], prefer_newest: bool
) -> None:
    output, backups = _folders(tmp_path)
    place(templates["400"], output / "model_last.pt")
    place(templates["300"], output / "model_300.pt")
    wrong_vocabulary = Recorder(Expectation("tiny", 64))  # the files were made with 32 symbols
    rejected: list[Rejection] = []
    choice = choose(
        discover(SOURCES, output, backups, None).candidates,
        wrong_vocabulary,
        deep=True,
        prefer_newest=prefer_newest,
        on_reject=rejected.append,
    )
    assert choice.candidate is None and choice.blocker is not None
    assert choice.blocker.candidate.path == output / "model_last.pt"
    assert blocking_kind(choice.blocker.verdict) == BLOCK_COMPATIBILITY
    assert rejected == []  # nothing to quarantine


def test_an_incompatible_temp_is_a_candidate_not_a_cut_off_save(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    output, backups = _folders(tmp_path)
    temp = place(templates["300"], output / ".model_last.pt.partial-999999-0000ffff")
    found = discover(SOURCES, output, backups, None)
    (decision,) = judge_temps(found.temps, Recorder(Expectation("tiny", 64)), found.candidates)
    assert decision.temp.path == temp and decision.action == "candidate"


def test_blocking_is_decided_by_the_failure_kind_not_the_message(tmp_path: Path) -> None:
    def verdict(cause: str, failure: str) -> Verdict:
        return Verdict(str(tmp_path / "x.pt"), False, cause, "unknown", "unknown", None, (), 10, {}, failure)

    # A reworded message must not turn an unreadable (possibly valid) file into damage, nor the reverse.
    assert blocking_kind(verdict("permission denied while opening", "unreadable")) == "unreadable"
    assert blocking_kind(verdict("cannot read the file: it ends early", "truncated")) is None
    assert blocking_kind(verdict("tensor shapes differ", "shape")) == "compatibility"
