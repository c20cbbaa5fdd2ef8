"""resolve_checkpoint end to end on real checkpoint files, real renames and a real read-only volume."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.checkpoints.cache import CACHE_FILE_NAME
from entrypoint.checkpoints.f5_rule import f5_choice_in
from entrypoint.checkpoints.resolve import CheckpointOutcome
from entrypoint.checkpoints.validate import validate_file
from entrypoint.settings import Settings
from tests.ckpt_templates import (
    CountingValidator,
    build_templates,
    flip_tensor_byte,
    make_settings,
    place,
    planned_actions,
    resolve_checkpoint,
    sha256_of,
    snapshot,
)
from tests.mounts import tmpfs


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_templates(tmp_path_factory.mktemp("templates"))


def assert_stock_invariant(settings: Settings, outcome: CheckpointOutcome) -> None:
    """After a run in stock mode, F5-TTS's own rule lands exactly on the file the outcome names."""
    assert outcome.load_path is not None
    choice = f5_choice_in(settings.output_dir)
    assert choice.ambiguous == ()
    assert choice.name is not None
    assert os.path.samefile(settings.output_dir / choice.name, outcome.load_path)


def test_healthy_model_last_is_used_and_nothing_changes(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    place(templates["400"], settings.output_dir / "model_last.pt")
    place(templates["300"], settings.output_dir / "model_300.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status == "ok", outcome
    assert (outcome.source, outcome.kind, outcome.update) == ("last", "training", 400)
    assert outcome.load_path == str(settings.output_dir / "model_last.pt")
    assert outcome.quarantined == () and outcome.rejected == ()
    assert outcome.chosen is not None and outcome.chosen.passed("integrity")


def test_truncated_last_is_quarantined_byte_identical(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    last = settings.output_dir / "model_last.pt"
    os.truncate(place(templates["400"], last), 1_700_000)
    digest = sha256_of(last)
    place(templates["300"], settings.output_dir / "model_300.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status == "warn"
    assert outcome.update == 300 and outcome.source == "numbered"
    (record,) = outcome.quarantined
    assert record.path == str(last) and record.error is None
    moved = Path(record.moved_to or "")
    assert moved == settings.output_dir / "model_last.pt.corrupted" and sha256_of(moved) == digest
    reason = json.loads(moved.with_name(moved.name + ".json").read_text())
    assert "truncated" in reason["cause"] and "where siblings are" in reason["cause"]
    assert reason["failed_level"] == "structure" and reason["size"] == 1_700_000
    assert [v.path for v in outcome.rejected] == [str(last)]
    assert "1 invalid" in outcome.message and outcome.fix


def test_check_mode_changes_nothing_and_reports_what_it_would_do(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path, trainer_mode="stock")
    out = settings.output_dir
    os.truncate(place(templates["400"], out / "model_last.pt"), 1_000_000)
    (out / "model_900.pt").symlink_to(tmp_path / "gone.pt")
    os.truncate(place(templates["300"], out / ".model_last.pt.partial-999999-00000001"), 10_000)
    place(templates["200"], settings.backup_dir / "model_200.pt")
    before = snapshot(tmp_path)
    outcome = resolve_checkpoint(settings, apply=False)
    assert snapshot(tmp_path) == before
    assert not (out / "preflight" / CACHE_FILE_NAME).exists()
    assert outcome.update == 200 and outcome.source == "backups"
    assert outcome.load_path == str(out / "model_200.pt")  # where the install would put it
    assert {(Path(q.path).name, q.moved_to, q.error) for q in outcome.quarantined} == {
        ("model_last.pt", None, "dry run"),
        ("model_900.pt", None, "dry run"),
    }
    planned = {(a.kind, a.path.name, a.target.name if a.target else None) for a in planned_actions(settings)}
    assert ("remove-temp", ".model_last.pt.partial-999999-00000001", None) in planned
    assert ("install-link", "model_200.pt", "model_200.pt") in planned
    assert ("quarantine", "model_last.pt", "model_last.pt.corrupted") in planned
    # The real run then does exactly that.
    applied = resolve_checkpoint(settings, apply=True)
    assert applied.load_path == outcome.load_path and applied.update == 200
    assert_stock_invariant(settings, applied)
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_deep_failure_of_the_winner_is_quarantined_and_the_next_used(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path)
    flip_tensor_byte(place(templates["400"], settings.output_dir / "model_last.pt"))
    os.truncate(place(templates["300"], settings.output_dir / "model_300.pt"), 2_000_000)
    place(templates["200"], settings.output_dir / "model_200.pt")
    place(templates["100"], settings.backup_dir / "model_100.pt")
    counting = CountingValidator()
    outcome = resolve_checkpoint(settings, apply=True, validator=counting)
    assert outcome.update == 200
    assert [Path(q.path).name for q in outcome.quarantined] == ["model_last.pt", "model_300.pt"]
    levels = {
        Path(q.path).name: json.loads(Path(q.moved_to + ".json").read_text())["failed_level"]
        for q in outcome.quarantined
        if q.moved_to
    }
    assert levels == {"model_last.pt": "integrity", "model_300.pt": "structure"}
    assert [name for name, deep in counting.calls if deep] == ["model_last.pt", "model_200.pt"]
    # PREFER_NEWEST: every training candidate gets the quick levels (a few MB), the older ones no deep read.
    assert ("model_100.pt", False) in counting.calls and ("model_100.pt", True) not in counting.calls


def test_strict_order_never_opens_candidates_after_the_winner(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path, prefer_newest="false")
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 2_000_000)
    place(templates["200"], settings.output_dir / "model_200.pt")
    place(templates["300"], settings.backup_dir / "model_300.pt")
    counting = CountingValidator()
    outcome = resolve_checkpoint(settings, apply=True, validator=counting)
    assert outcome.update == 200 and outcome.source == "numbered"
    assert "model_300.pt" not in [name for name, _ in counting.calls]
    assert any("update 300" in p and "CHECKPOINT_SOURCES order decided" in p for p in outcome.problems)


def test_nothing_valid_fails_unless_scratch_is_allowed(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    (settings.output_dir / "model_last.pt").write_bytes(b"\0" * 8192)
    outcome = resolve_checkpoint(settings, apply=False)
    assert outcome.status == "fail" and outcome.chosen is None and outcome.kind == "none"
    assert "model_last.pt" in outcome.message and "zero" in outcome.message
    assert "ALLOW_SCRATCH" in outcome.fix and "PRETRAINED_CHECKPOINT" in outcome.fix
    scratch = resolve_checkpoint(dataclasses.replace(settings, allow_scratch=True), apply=True)
    assert scratch.status == "warn" and scratch.kind == "scratch" and scratch.load_path is None
    empty = make_settings(tmp_path / "fresh", allow_scratch="true")
    first_run = resolve_checkpoint(empty, apply=True)
    assert first_run.status == "ok" and first_run.kind == "scratch"


def test_pretrained_when_no_training_checkpoint(tmp_path: Path, templates: dict[str, Path]) -> None:
    source = place(templates["pre_st"], tmp_path / "hub" / "model_1200000.safetensors")
    settings = make_settings(tmp_path, pretrained_checkpoint=str(source))
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status == "ok" and outcome.kind == "pretrained" and outcome.update == 0
    assert outcome.load_path == str(source)  # safe mode: loaded by path, nothing copied
    assert os.listdir(settings.output_dir) == ["preflight"]


def test_stock_truncated_pretrained_copy_is_replaced_from_its_source(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    source = place(templates["pre_pt"], tmp_path / "hub" / "model_200000.pt")
    settings = make_settings(tmp_path, pretrained_checkpoint=str(source), trainer_mode="stock")
    copy = settings.output_dir / "pretrained_model_200000.pt"
    os.truncate(place(templates["pre_pt"], copy), 300_000)
    truncated_digest = sha256_of(copy)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.kind == "pretrained" and outcome.load_path == str(copy)
    assert sha256_of(copy) == sha256_of(source)  # whole again (a link or an atomic copy of the source)
    (record,) = outcome.quarantined
    assert "truncated" in record.cause and "where siblings are" in record.cause
    assert sha256_of(Path(record.moved_to or "")) == truncated_digest
    assert_stock_invariant(settings, outcome)


@pytest.mark.parametrize(
    "layout",
    [
        "bad-last-good-numbered",
        "all-bad-backup",
        "all-bad-pretrained",
        "two-pretrained",
        "temp-complete-no-final",
        "directory-named-last",
    ],
)
def test_stock_mode_f5_rule_lands_on_the_chosen_file(
    tmp_path: Path, templates: dict[str, Path], layout: str
) -> None:
    source = place(templates["pre_pt"], tmp_path / "hub" / "base.pt")
    settings = make_settings(tmp_path, trainer_mode="stock", pretrained_checkpoint=str(source))
    out, backups = settings.output_dir, settings.backup_dir
    if layout == "bad-last-good-numbered":
        os.truncate(place(templates["400"], out / "model_last.pt"), 100)
        place(templates["200"], out / "model_200.pt")
        flip_tensor_byte(place(templates["300"], out / "model_300.pt"))
        expected = 200
    elif layout == "all-bad-backup":
        os.truncate(place(templates["400"], out / "model_last.pt"), 100)
        os.truncate(place(templates["300"], out / "model_300.pt"), 100)
        place(templates["100"], backups / "model_100.pt")
        expected = 100
    elif layout == "all-bad-pretrained":
        (out / "model_last.pt").write_bytes(b"<html>not found</html>")
        expected = 0
    elif layout == "two-pretrained":
        place(templates["pre_st"], out / "pretrained_other.safetensors")
        expected = 0
    elif layout == "temp-complete-no-final":
        place(templates["300"], out / ".model_last.pt.partial-999999-0000abcd")
        place(templates["100"], out / "model_100.pt")
        expected = 300
    else:
        (out / "model_last.pt").mkdir()
        place(templates["100"], out / "model_100.pt")
        expected = 100
    before = snapshot(tmp_path)
    dry = resolve_checkpoint(settings, apply=False)
    assert snapshot(tmp_path) == before
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status in ("ok", "warn"), outcome.message
    assert outcome.update == expected
    assert (dry.load_path, dry.update, dry.status) == (outcome.load_path, outcome.update, outcome.status)
    assert_stock_invariant(settings, outcome)
    assert validate_file(Path(outcome.load_path or ""), deep=True).valid
    # A second run finds everything in place: nothing more to move.
    again = resolve_checkpoint(settings, apply=True)
    assert again.load_path == outcome.load_path and again.quarantined == ()


def test_complete_temp_is_promoted_and_stale_temp_removed(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    out = settings.output_dir
    temp = place(templates["300"], out / ".model_last.pt.partial-999999-00000aaa")
    digest = sha256_of(temp)
    stale = place(templates["100"], out / ".model_100.pt.partial-999999-00000bbb")
    place(templates["200"], out / "model_200.pt")
    planned = [(a.kind, a.path) for a in planned_actions(settings)]
    assert ("place-save", temp) in planned and ("remove-temp", stale) in planned
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 300 and outcome.load_path == str(out / "model_last.pt")
    assert sha256_of(out / "model_last.pt") == digest and not temp.exists()
    assert not stale.exists()


def test_complete_newer_temp_next_to_a_valid_final_is_kept_in_strict_order(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path, prefer_newest="false")
    out = settings.output_dir
    place(templates["200"], out / "model_last.pt")
    temp = place(templates["300"], out / ".model_last.pt.partial-999999-00000ccc")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 200 and temp.exists()
    assert outcome.status == "warn" and any(str(temp) in p and "kept" in p for p in outcome.problems)


def test_symlinked_checkpoint_quarantines_the_link_not_the_target(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path)
    outside = place(templates["400"], tmp_path / "elsewhere" / "big.pt")
    os.truncate(outside, 500_000)
    digest = sha256_of(outside)
    (settings.output_dir / "model_last.pt").symlink_to(outside)
    place(templates["100"], settings.output_dir / "model_100.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 100
    moved = Path(outcome.quarantined[0].moved_to or "")
    assert moved.is_symlink() and os.readlink(moved) == str(outside)
    assert sha256_of(outside) == digest


def test_quarantine_dir_setting(tmp_path: Path, templates: dict[str, Path]) -> None:
    qdir = tmp_path / "quarantine"
    qdir.mkdir()
    settings = make_settings(tmp_path, quarantine_dir=str(qdir))
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 1000)
    place(templates["100"], settings.output_dir / "model_100.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.quarantined[0].moved_to == str(qdir / "model_last.pt.corrupted")
    assert (qdir / "model_last.pt.corrupted.json").is_file()


def test_unchanged_files_are_not_read_again(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    os.truncate(place(templates["400"], settings.backup_dir / "model_400.pt"), 1000)
    place(templates["300"], settings.output_dir / "model_last.pt")
    first = CountingValidator()
    resolve_checkpoint(settings, apply=True, validator=first)
    assert ("model_last.pt", True) in first.calls
    second = CountingValidator()
    outcome = resolve_checkpoint(settings, apply=True, validator=second)
    assert second.calls == [] and outcome.update == 300
    (settings.output_dir / "preflight" / CACHE_FILE_NAME).write_text("garbage")
    third = CountingValidator()
    warned = resolve_checkpoint(settings, apply=False, validator=third)
    assert third.calls and any("verdict cache" in p for p in warned.problems)


def test_pretrained_setting_that_is_bad_is_reported_not_moved(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    source = place(templates["pre_pt"], tmp_path / "hub" / "base.pt")
    os.truncate(source, 10_000)
    settings = make_settings(tmp_path, pretrained_checkpoint=str(source), allow_scratch="true")
    outcome = resolve_checkpoint(settings, apply=True)
    assert source.exists() and outcome.quarantined == ()
    assert outcome.kind == "scratch"
    assert any("not ours" in p for p in outcome.problems)


@pytest.fixture()
def read_only_volume() -> Iterator[Path]:
    """A small tmpfs mounted here and remounted read-only after the test fills it."""
    mount_point = Path(tempfile.mkdtemp(prefix="ro-volume-"))
    try:
        with tmpfs(mount_point, "64m"):
            yield mount_point
    finally:
        mount_point.rmdir()


def _remount_ro(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True, capture_output=True)


def test_read_only_volume_safe_mode_still_loads_the_chosen_file(
    read_only_volume: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(read_only_volume)
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 1000)
    place(templates["200"], settings.output_dir / "model_200.pt")
    _remount_ro(read_only_volume)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.load_path == str(settings.output_dir / "model_200.pt") and outcome.update == 200
    assert outcome.status == "warn"
    (record,) = outcome.quarantined
    assert record.moved_to is None and record.error == "read-only file system"
    assert "could not be quarantined" in outcome.message and "writable" in outcome.fix
    assert any("verdict cache" in p and "not written" in p for p in outcome.problems)


def test_read_only_volume_stock_mode_fails_clearly(
    read_only_volume: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(read_only_volume, trainer_mode="stock")
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 1000)
    place(templates["200"], settings.output_dir / "model_200.pt")
    _remount_ro(read_only_volume)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status == "fail" and outcome.load_path is None
    assert "model_last.pt" in outcome.message and "TRAINER_MODE=safe" in outcome.fix


def test_progress_and_load_levels_apply_to_the_winner_only(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    pytest.importorskip("torch")
    settings = make_settings(tmp_path, load_verify="true")
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 5000)
    winner = place(templates["300"], settings.output_dir / "model_300.pt")
    seen: list[tuple[int, int]] = []
    outcome = resolve_checkpoint(
        settings, apply=False, progress=lambda done, total: seen.append((done, total))
    )
    assert outcome.chosen is not None and outcome.chosen.levels[-2:] == ("integrity", "load")
    assert seen and seen[-1][0] == seen[-1][1] > 0 and seen[-1][1] <= winner.stat().st_size


def test_stock_mode_warns_when_model_last_is_a_link(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path, trainer_mode="stock")
    target = place(templates["300"], settings.output_dir / "model_300.pt")
    (settings.output_dir / "model_last.pt").symlink_to(target)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 300 and outcome.status == "warn"
    assert any("overwrite the file it points to" in p for p in outcome.problems)
    assert_stock_invariant(settings, outcome)


def test_stock_scratch_needs_a_folder_f5_will_not_load_from(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, trainer_mode="stock", allow_scratch="true")
    (settings.output_dir / "model_last.pt").write_bytes(b"\0" * 4096)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.kind == "scratch" and outcome.status == "warn"
    assert f5_choice_in(settings.output_dir).starts_fresh


def test_stock_scratch_on_a_read_only_volume_fails(read_only_volume: Path) -> None:
    settings = make_settings(read_only_volume, trainer_mode="stock", allow_scratch="true")
    (settings.output_dir / "model_last.pt").write_bytes(b"\0" * 4096)
    _remount_ro(read_only_volume)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status == "fail" and "would still try to load model_last.pt" in outcome.message
    assert outcome.quarantined[0].error == "read-only file system"


def test_a_required_action_that_fails_after_a_quarantine_is_in_the_report(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    """Stock mode on a small OUTPUT_DIR: the quarantine is done, the install copy of the chosen backup then
    finds no room. The report must record both: the move that happened and the step that did not."""
    from tests.ckpt_factory import DEFAULT_VOCAB_SIZE

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "raw.arrow").write_bytes(b"arrow")
    (dataset / "duration.json").write_text('{"duration": [1.0]}')
    (dataset / "vocab.txt").write_text("".join(f"{chr(0x4E00 + i)}\n" for i in range(DEFAULT_VOCAB_SIZE)))
    with tmpfs(tmp_path / "output", "6m") as output:
        last = place(templates["400"], output / "model_last.pt")
        os.truncate(last, 1_000_000)
        digest = sha256_of(last)
        place(templates["300"], tmp_path / "backups" / "model_300.pt")
        env_file = tmp_path / "stock.env"
        env_file.write_text(
            f"OUTPUT_DIR={output}\nBACKUP_DIR={tmp_path / 'backups'}\nLOG_DIR={tmp_path / 'logs'}\n"
            f"DATASET_DIR={dataset}\nMODEL_PRESET=tiny\nTRAINER_MODE=stock\nTRAINER_COMMAND=true\n"
            "WAIT_TIMEOUT_S=0\nBACKUP_EVERY_UPDATES=0\n"
        )
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_") and k != "ENV_FILE"}
        done = subprocess.run(
            [sys.executable, "-m", "entrypoint", "run", "--env-file", str(env_file), "--json"],
            capture_output=True,
            text=True,
            env=environ,
            cwd=tmp_path,
            timeout=120,
        )
        assert done.returncode == 3, done.stderr
        report = json.loads((output / "preflight" / "report.json").read_text())
        by_kind = {action["what"]: action for action in report["actions"]}
        assert by_kind["quarantine"]["done"] and by_kind["quarantine"]["landed"] == str(last) + ".corrupted"
        assert not by_kind["install-copy"]["done"] and by_kind["install-copy"]["error"]
        assert sha256_of(output / "model_last.pt.corrupted") == digest
        assert report["status"] == "fail" and report["checkpoint"]["chosen"] is None
        assert any(c["name"] == "actions" and c["status"] == "fail" for c in report["checks"])
