"""What the checkpoint choice must not do quietly: end to end on real files, renames and permissions.

An incompatible checkpoint (wrong MODEL_PRESET / vocabulary) or an unreadable one stops the run with nothing
moved; the newest valid progress is loaded; counts and reasons say what was found. Tests that need a file
another user cannot read run the resolution as uid 65534 (root reads everything) and skip where that is
not possible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.checkpoints.f5_rule import f5_choice_in
from entrypoint.checkpoints.resolve import CheckpointOutcome
from entrypoint.checkpoints.validate import Expectation
from entrypoint.settings import Settings
from tests.ckpt_templates import (
    build_templates,
    make_settings,
    place,
    resolve_checkpoint,
    sha256_of,
    snapshot,
)

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_templates(tmp_path_factory.mktemp("templates"))


def _checkpoints(settings: Settings) -> dict[str, tuple[str, str]]:
    """The checkpoint folders without the preflight's own report/cache folder."""
    state = snapshot(settings.output_dir, settings.backup_dir)
    return {path: entry for path, entry in state.items() if "/preflight" not in path}


def assert_stock_invariant(settings: Settings, outcome: CheckpointOutcome) -> None:
    assert outcome.load_path is not None
    choice = f5_choice_in(settings.output_dir)
    assert choice.name is not None and choice.ambiguous == ()
    assert os.path.samefile(settings.output_dir / choice.name, outcome.load_path)


# 1. Compatibility is a configuration problem


@pytest.mark.parametrize("prefer_newest", ["true", "false"])
def test_wrong_preset_fails_and_moves_nothing_then_the_corrected_run_resumes(
    tmp_path: Path, templates: dict[str, Path], prefer_newest: str
) -> None:
    pretrained = place(templates["pre_pt"], tmp_path / "hub" / "base.pt")
    settings = make_settings(
        tmp_path, prefer_newest=prefer_newest, pretrained_checkpoint=str(pretrained), allow_scratch="true"
    )
    place(templates["400"], settings.output_dir / "model_last.pt")
    place(templates["300"], settings.output_dir / "model_300.pt")
    place(templates["200"], settings.backup_dir / "model_200.pt")
    before = _checkpoints(settings)
    wrong = Expectation("F5TTS_Base", 32)  # the files are the "tiny" model
    for apply in (False, True):
        outcome = resolve_checkpoint(settings, apply=apply, expect=wrong)
        assert outcome.status == "fail" and outcome.kind == "none" and outcome.load_path is None
        assert "checkpoints in OUTPUT_DIR are for a different model" in outcome.message
        assert "MODEL_PRESET=F5TTS_Base, vocabulary 32 symbols" in outcome.message
        assert "MODEL_PRESET" in outcome.fix and "VOCAB_FILE" in outcome.fix
        assert outcome.quarantined == ()
        assert _checkpoints(settings) == before  # nothing moved, no fallback to pretrained or scratch
    corrected = resolve_checkpoint(settings, apply=True, expect=Expectation("tiny", 32))
    assert corrected.status == "ok" and corrected.update == 400 and corrected.kind == "training"


def test_wrong_vocabulary_is_reported_with_the_configured_size(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path)
    place(templates["400"], settings.output_dir / "model_last.pt")
    outcome = resolve_checkpoint(settings, apply=True, expect=Expectation("tiny", 64))
    assert outcome.status == "fail" and "vocabulary 64 symbols" in outcome.message
    assert (settings.output_dir / "model_last.pt").is_file()


def test_an_older_incompatible_file_does_not_block_newer_progress(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    from tests.ckpt_factory import make_training_checkpoint

    settings = make_settings(tmp_path)
    place(templates["400"], settings.output_dir / "model_400.pt")
    old = make_training_checkpoint(settings.backup_dir / "model_100.pt", update=100, vocab_size=40)
    outcome = resolve_checkpoint(settings, apply=True, expect=Expectation("tiny", 32))
    assert outcome.update == 400 and outcome.status == "warn"
    assert old.is_file() and outcome.quarantined == ()
    assert any(str(old) in p and "different model" in p for p in outcome.problems)


# 2. Newest progress wins


def test_newest_numbered_beats_an_older_model_last(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    place(templates["300"], settings.output_dir / "model_last.pt")
    place(templates["400"], settings.output_dir / "model_400.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.load_path == str(settings.output_dir / "model_400.pt") and outcome.update == 400
    assert outcome.status == "ok" and outcome.quarantined == ()
    strict = resolve_checkpoint(make_settings(tmp_path, prefer_newest="false"), apply=True)
    assert strict.update == 300 and strict.source == "last"


def test_a_newer_backup_wins(tmp_path: Path, templates: dict[str, Path]) -> None:
    settings = make_settings(tmp_path)
    place(templates["200"], settings.output_dir / "model_last.pt")
    place(templates["400"], settings.backup_dir / "model_400.pt")
    outcome = resolve_checkpoint(settings, apply=False)
    assert outcome.update == 400 and outcome.source == "backups"


def test_a_newer_complete_temp_replaces_an_older_valid_final_which_is_moved_aside(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path)
    out = settings.output_dir
    last = place(templates["300"], out / "model_last.pt")
    older_digest = sha256_of(last)
    temp = place(templates["400"], out / ".model_last.pt.partial-999999-abcdef12")
    newer_digest = sha256_of(temp)
    before = snapshot(tmp_path)
    dry = resolve_checkpoint(settings, apply=False)
    assert snapshot(tmp_path) == before
    assert dry.update == 400 and dry.load_path == str(last)
    assert [(q.superseded, q.error) for q in dry.quarantined] == [(True, "dry run")]

    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 400 and outcome.load_path == str(last)
    assert sha256_of(last) == newer_digest and not temp.exists()
    (record,) = outcome.quarantined
    assert record.superseded and record.moved_to == str(out / "model_last.pt.superseded")
    aside = Path(record.moved_to)
    assert sha256_of(aside) == older_digest  # never deleted, never overwritten
    reason = json.loads(aside.with_name(aside.name + ".json").read_text())
    assert "superseded by a newer complete save" in reason["cause"]
    assert "invalid" not in outcome.message and "moved 1 older valid checkpoint(s) aside" in outcome.message
    again = resolve_checkpoint(settings, apply=True)
    assert again.update == 400 and again.quarantined == ()


def test_stock_mode_keeps_model_last_and_warns_about_newer_progress(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path, trainer_mode="stock")
    place(templates["300"], settings.output_dir / "model_last.pt")
    newer = place(templates["400"], settings.output_dir / "model_400.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 300 and outcome.status == "warn" and newer.is_file()
    assert any("update 400" in p and "TRAINER_MODE=stock" in p for p in outcome.problems)
    assert_stock_invariant(settings, outcome)


# 4. and 6. Counts and what each moved entry was


def test_every_rejected_or_quarantined_entry_is_counted_and_described(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path)
    out = settings.output_dir
    (out / "model_last.pt").mkdir()
    (out / "model_900.pt").symlink_to(tmp_path / "gone.pt")
    (out / "model_800.pt").symlink_to(out / "model_800.pt")
    os.truncate(place(templates["300"], out / "model_300.pt"), 2_000_000)
    place(templates["200"], out / "model_200.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 200
    assert len(outcome.quarantined) == 4
    assert "4 invalid checkpoint(s) skipped" in outcome.message
    causes = {Path(q.path).name: q.cause for q in outcome.quarantined}
    assert causes["model_last.pt"].endswith("a folder, not a file")
    assert causes["model_800.pt"].endswith("a symlink loop")
    assert f"a dangling symlink to {tmp_path / 'gone.pt'}" in causes["model_900.pt"]
    for record in outcome.quarantined:
        reason = json.loads(Path(f"{record.moved_to}.json").read_text())
        assert reason["cause"] == record.cause


# 5. QUARANTINE_DIR problems are visible


def test_quarantine_dir_that_is_not_a_folder_is_named(tmp_path: Path, templates: dict[str, Path]) -> None:
    not_a_folder = tmp_path / "quarantine"
    not_a_folder.write_text("")
    settings = make_settings(tmp_path, quarantine_dir=str(not_a_folder))
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 1000)
    place(templates["100"], settings.output_dir / "model_100.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    (record,) = outcome.quarantined
    assert record.moved_to == str(settings.output_dir / "model_last.pt.corrupted") and record.error is None
    assert any(f"QUARANTINE_DIR {not_a_folder} is not a folder" in p for p in outcome.problems)


def test_missing_quarantine_dir_is_named_for_each_file_renamed_in_place(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path, quarantine_dir=str(tmp_path / "nowhere"))
    os.truncate(place(templates["400"], settings.output_dir / "model_last.pt"), 1000)
    os.truncate(place(templates["300"], settings.output_dir / "model_300.pt"), 1000)
    place(templates["100"], settings.output_dir / "model_100.pt")
    outcome = resolve_checkpoint(settings, apply=True)
    assert [q.moved_to for q in outcome.quarantined] == [
        str(settings.output_dir / "model_last.pt.corrupted"),
        str(settings.output_dir / "model_300.pt.corrupted"),
    ]
    named = [p for p in outcome.problems if "QUARANTINE_DIR" in p and "does not exist" in p]
    assert len(named) == 2 and all("renamed in place" in p for p in named)


# 3. and 5. Permissions: run as another user

_AS_NOBODY = """
import json, sys

from entrypoint.actions import perform
from entrypoint.checkpoints.resolve import plan_checkpoint, settle
from entrypoint.modes import mode_for
from entrypoint.settings import load_settings
environ = json.loads(sys.argv[1])
settings = load_settings(environ).settings
plan = plan_checkpoint(settings, mode_for(settings))
outcome = settle(plan, perform(plan.actions, quarantine_dir=settings.quarantine_dir).results, settings)
print(json.dumps({"status": outcome.status, "message": outcome.message, "fix": outcome.fix,
                  "update": outcome.update, "quarantined": [[q.path, q.moved_to, q.error]
                  for q in outcome.quarantined]}))
"""


@pytest.fixture()
def shared_root() -> Iterator[Path]:
    """A folder uid 65534 can enter, outside pytest's root-only tmp folders."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running as another user needs root and setpriv")
    folder = Path(tempfile.mkdtemp(prefix="ckpt-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _resolve_as_nobody(root: Path, **values: str) -> dict:
    environ = {
        "ENV_FILE": str(root / "empty.env"),
        "OUTPUT_DIR": str(root / "output"),
        "BACKUP_DIR": str(root / "backups"),
        "LOG_DIR": str(root / "logs"),
        **{key.upper(): value for key, value in values.items()},
    }
    (root / "empty.env").write_text("")
    (root / "empty.env").chmod(0o644)
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*command, sys.executable, "-c", _AS_NOBODY, json.dumps(environ)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(root)},
        timeout=120,
    )
    if done.returncode != 0 and "setpriv" in done.stderr:
        pytest.skip(f"setpriv not permitted here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _folders_for_nobody(root: Path) -> tuple[Path, Path]:
    output, backups = root / "output", root / "backups"
    for folder in (output, backups):
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
    return output, backups


def _readable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def test_an_unreadable_checkpoint_stops_the_run(shared_root: Path, templates: dict[str, Path]) -> None:
    output, _backups = _folders_for_nobody(shared_root)
    hidden = place(templates["400"], output / "model_last.pt")
    hidden.chmod(0o600)  # root's own file: uid 65534 cannot read it
    _readable(place(templates["200"], output / "model_200.pt"))
    before = snapshot(output)
    result = _resolve_as_nobody(shared_root)
    assert result["status"] == "fail" and result["quarantined"] == []
    assert str(hidden) in result["message"] and "permission denied" in result["message"].lower()
    assert f"readable by uid {NOBODY}" in result["fix"] and "chown/chmod" in result["fix"]
    assert snapshot(output) == {k: v for k, v in before.items()}


def test_an_unreadable_unfinished_save_is_not_removed(shared_root: Path, templates: dict[str, Path]) -> None:
    output, _backups = _folders_for_nobody(shared_root)
    temp = place(templates["400"], output / ".model_last.pt.partial-999999-0000abcd")
    temp.chmod(0o600)
    _readable(place(templates["200"], output / "model_200.pt"))
    result = _resolve_as_nobody(shared_root)
    assert result["status"] == "fail" and temp.exists()
    assert str(temp) in result["message"] and "Permission denied" in result["message"]
    assert f"readable by uid {NOBODY}" in result["fix"]


def test_a_quarantine_dir_that_refuses_the_move_is_named_in_the_fix(
    shared_root: Path, templates: dict[str, Path]
) -> None:
    output, _backups = _folders_for_nobody(shared_root)
    quarantine_dir = shared_root / "quarantine"
    quarantine_dir.mkdir(mode=0o755)  # root's folder: uid 65534 may not create entries in it
    os.truncate(_readable(place(templates["400"], output / "model_last.pt")), 1000)
    _readable(place(templates["200"], output / "model_200.pt"))
    result = _resolve_as_nobody(shared_root, quarantine_dir=str(quarantine_dir))
    assert result["update"] == 200 and result["status"] == "warn"
    ((_path, moved_to, error),) = result["quarantined"]
    assert moved_to is None and error == "Permission denied"
    assert f"QUARANTINE_DIR ({quarantine_dir})" in result["fix"] and "OUTPUT_DIR" not in result["fix"]


def test_the_cli_exits_3_for_checkpoints_of_another_model(tmp_path: Path, templates: dict[str, Path]) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "raw.arrow").write_bytes(b"arrow")
    (dataset / "duration.json").write_text('{"duration": [1.0]}')
    (dataset / "vocab.txt").write_text("".join(f"{chr(97 + i)}\n" for i in range(26)) + "0\n1\n2\n3\n4\n5\n")
    env_file = tmp_path / "test.env"
    env_file.write_text(
        f"OUTPUT_DIR={tmp_path / 'output'}\nBACKUP_DIR={tmp_path / 'backups'}\nLOG_DIR={tmp_path / 'logs'}\n"
        f"DATASET_DIR={dataset}\nMODEL_PRESET=F5TTS_Base\n"
    )
    last = place(templates["400"], tmp_path / "output" / "model_last.pt")
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("PREFLIGHT_", "WANDB"))}
    environ.pop("ENV_FILE", None)

    def preflight(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "entrypoint", "check", "--env-file", str(env_file), *extra],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = preflight()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "are for a different model" in done.stdout and "MODEL_PRESET=F5TTS_Base" in done.stdout
    assert "vocabulary 32 symbols" in done.stdout and last.is_file()
    environ["MODEL_PRESET"] = "tiny"
    fixed = preflight()
    assert "update 400" in fixed.stdout, fixed.stdout


def test_an_output_dir_that_cannot_be_listed_stops_the_run(
    shared_root: Path, templates: dict[str, Path]
) -> None:
    output, _backups = _folders_for_nobody(shared_root)
    _readable(place(templates["200"], output / "model_last.pt"))
    os.chown(output, 0, 0)
    output.chmod(0o711)  # uid 65534 may open known names but not list the folder: numbered files are hidden
    result = _resolve_as_nobody(shared_root, allow_scratch="true")
    assert result["status"] == "fail" and f"{output} cannot be listed" in result["message"]
    assert f"readable by uid {NOBODY}" in result["fix"]


# A checkpoint still being copied in (a restored backup, an rsync) is never judged mid-copy


def _slow_copy(source: Path, target: Path, started: threading.Event, *, chunks: int, pause_s: float) -> None:
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            started.set()
            time.sleep(pause_s)  # a slow disk or network: the copy itself, not the test's synchronisation


def _resolve_while_copying(
    tmp_path: Path, templates: dict[str, Path], *, wait_s: str, chunks: int, pause_s: float
) -> tuple[CheckpointOutcome, Path]:
    """`run`'s checkpoint step while update 400 is still being copied in as model_last.pt (model_300.pt beside)."""
    settings = make_settings(tmp_path, wait_timeout_s=wait_s)
    place(templates["300"], settings.output_dir / "model_300.pt")
    started = threading.Event()
    last = settings.output_dir / "model_last.pt"
    copier = threading.Thread(
        target=_slow_copy,
        args=(templates["400"], last, started),
        kwargs={"chunks": chunks, "pause_s": pause_s},
    )
    copier.start()
    started.wait(30)
    try:
        return resolve_checkpoint(settings, apply=True), last
    finally:
        copier.join()


def test_a_checkpoint_still_being_copied_in_is_waited_for_not_quarantined(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    outcome, _last = _resolve_while_copying(tmp_path, templates, wait_s="60", chunks=8, pause_s=0.25)
    assert outcome.quarantined == () and outcome.update == 400 and outcome.source == "last"


def test_a_copy_that_keeps_changing_stops_the_run_and_moves_nothing(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    outcome, last = _resolve_while_copying(tmp_path, templates, wait_s="1", chunks=40, pause_s=0.2)
    assert outcome.status == "fail" and outcome.quarantined == ()
    assert "still being written" in outcome.message and "let the copy finish" in outcome.fix
    assert last.exists()


def test_a_quarantined_file_without_its_reason_file_is_reported(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path)
    place(templates["300"], settings.output_dir / "model_300.pt")
    orphan = place(templates["400"], settings.output_dir / "model_last.pt.corrupted")
    outcome = resolve_checkpoint(settings, apply=False)
    assert outcome.status == "warn" and outcome.update == 300
    assert any(str(orphan) in p and "reason file" in p for p in outcome.problems)
    orphan.with_name(orphan.name + ".json").write_text("{}")
    assert resolve_checkpoint(settings, apply=False).status == "ok"
