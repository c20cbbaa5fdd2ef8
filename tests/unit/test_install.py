"""Stock-mode install: the chosen file ends up where F5-TTS's own rule picks it, safely."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from entrypoint.actions import INSTALL_COPY, INSTALL_LINK, OWN_COPY, Action, perform
from entrypoint.checkpoints.f5_rule import f5_choice_in
from entrypoint.checkpoints.install import plan_stock, pretrained_copy_name
from entrypoint.checkpoints.validate import validate_file
from entrypoint.checkpoints.verdict import Verdict
from tests.ckpt_templates import build_templates, place


@dataclass(frozen=True)
class Installed:
    ok: bool
    load_path: Path | None
    actions: tuple[Action, ...]
    why: str = ""


def install_stock(folder: Path, chosen: Path, verdict: Verdict, *, apply: bool) -> Installed:
    """What stock mode plans for the chosen file (plan_stock), performed as `run` performs it."""
    name, how = plan_stock(folder, chosen, verdict, os.listdir(folder))
    if name is None:
        return Installed(False, None, (), how)
    planned: tuple[Action, ...] = ()
    if how != "in place":
        planned = (
            Action(INSTALL_LINK if how == "link" else INSTALL_COPY, chosen, folder / name, required=True),
        )
    if apply:
        assert all(result.done for result in perform(planned, quarantine_dir=None).results)
    return Installed(True, folder / name, planned)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_templates(tmp_path_factory.mktemp("templates"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_already_picked_needs_nothing(tmp_path: Path, templates: dict[str, Path]) -> None:
    chosen = place(templates["200"], tmp_path / "model_200.pt")
    place(templates["100"], tmp_path / "model_100.pt")
    result = install_stock(tmp_path, chosen, validate_file(chosen), apply=True)
    assert result.ok and result.load_path == chosen and result.actions == ()


def test_backup_is_hard_linked_under_its_numbered_name(tmp_path: Path, templates: dict[str, Path]) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    backup = place(templates["300"], tmp_path / "backups" / "model_300.pt")
    result = install_stock(folder, backup, validate_file(backup), apply=True)
    assert result.ok and result.load_path == folder / "model_300.pt"
    assert os.path.samefile(result.load_path, backup)
    assert f5_choice_in(folder).name == "model_300.pt"
    assert result.actions[0].kind == INSTALL_LINK


def test_copy_to_model_last_when_a_higher_name_would_win(tmp_path: Path, templates: dict[str, Path]) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    (folder / "model_900.pt").write_bytes(b"not readable by us")  # e.g. a file the preflight may not touch
    backup = place(templates["300"], tmp_path / "backups" / "model_300.pt")
    result = install_stock(folder, backup, validate_file(backup), apply=True)
    assert result.ok and result.load_path == folder / "model_last.pt"
    # A real copy, never a link: the stock trainer rewrites model_last.pt in place.
    assert not os.path.samefile(result.load_path, backup)
    assert _sha(result.load_path) == _sha(backup)
    assert f5_choice_in(folder).name == "model_last.pt"
    assert not [n for n in os.listdir(folder) if ".partial-" in n]


def test_stock_trainer_save_writes_through_a_hard_link(tmp_path: Path) -> None:
    """Why model_last.pt is never a hard link: torch.save truncates the file it opens, in place."""
    torch = pytest.importorskip("torch")
    backup = tmp_path / "backup.pt"
    torch.save({"update": 1}, backup)
    os.link(backup, tmp_path / "model_last.pt")
    torch.save({"update": 2}, tmp_path / "model_last.pt")  # what F5-TTS's save_checkpoint does
    assert torch.load(backup, weights_only=True)["update"] == 2  # the backup is gone


def test_pretrained_goes_under_the_name_the_stock_cli_uses(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    source = place(templates["pre_st"], tmp_path / "hub" / "model_1200000.safetensors")
    verdict = validate_file(source)
    assert pretrained_copy_name(source, verdict) == "pretrained_model_1200000.safetensors"
    result = install_stock(folder, source, verdict, apply=True)
    assert result.ok and result.load_path == folder / "pretrained_model_1200000.safetensors"
    assert f5_choice_in(folder).name == result.load_path.name
    assert _sha(result.load_path) == _sha(source)


def test_several_pretrained_files_get_an_unambiguous_name(tmp_path: Path, templates: dict[str, Path]) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    place(templates["pre_pt"], folder / "pretrained_other.pt")  # valid, not chosen, not ours to move
    source = place(templates["pre_pt"], tmp_path / "hub" / "base.pt")
    result = install_stock(folder, source, validate_file(source), apply=True)
    assert result.ok and result.load_path == folder / "model_0.pt"
    choice = f5_choice_in(folder)
    assert choice.name == "model_0.pt" and choice.ambiguous == ()


def test_dry_run_changes_nothing_but_says_what_it_would_do(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    backup = place(templates["300"], tmp_path / "backups" / "model_300.pt")
    result = install_stock(folder, backup, validate_file(backup), apply=False)
    assert result.ok and result.load_path == folder / "model_300.pt"
    assert [a.kind for a in result.actions] == [INSTALL_LINK]
    assert os.listdir(folder) == []


def test_impossible_placement_fails_with_a_fix(tmp_path: Path, templates: dict[str, Path]) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    place(templates["400"], folder / "model_last.pt")  # valid, but CHECKPOINT_SOURCES chose another
    backup = place(templates["300"], tmp_path / "backups" / "model_300.pt")
    result = install_stock(folder, backup, validate_file(backup), apply=True)
    assert not result.ok and result.load_path is None
    assert "model_last.pt exists" in result.why
    assert sorted(os.listdir(folder)) == ["model_last.pt"]


def test_names_that_crash_f5_block_every_placement(tmp_path: Path, templates: dict[str, Path]) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    (folder / "model_best.pt").write_bytes(b"x")
    backup = place(templates["300"], tmp_path / "backups" / "model_300.pt")
    name, why = plan_stock(folder, backup, validate_file(backup), os.listdir(folder))
    # model_last.pt is picked before the number ordering that would crash on model_best.pt
    assert name == "model_last.pt", why


@pytest.fixture()
def other_fs_dir(tmp_path: Path) -> Iterator[Path]:
    here = tmp_path.stat().st_dev
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == here or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm on another file system than tmp_path")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="install-test-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_across_file_systems_it_copies(
    tmp_path: Path, other_fs_dir: Path, templates: dict[str, Path]
) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    backup = place(templates["300"], other_fs_dir / "model_300.pt")
    result = install_stock(folder, backup, validate_file(backup), apply=True)
    assert result.ok and result.load_path == folder / "model_300.pt"
    assert result.actions[0].kind == INSTALL_COPY
    assert _sha(result.load_path) == _sha(backup)
    assert validate_file(result.load_path, deep=True).valid


def test_a_hard_linked_model_last_gets_its_own_copy_before_the_stock_trainer_writes(tmp_path: Path) -> None:
    output, backups = tmp_path / "output", tmp_path / "backups"
    output.mkdir()
    backups.mkdir()
    last = output / "model_last.pt"
    last.write_bytes(b"checkpoint at update 5000")
    os.link(last, backups / "model_5000.pt")
    (result,) = perform([Action(OWN_COPY, last, required=True)], quarantine_dir=None).results
    assert result.done and last.stat().st_nlink == 1 and (backups / "model_5000.pt").stat().st_nlink == 1
    with open(last, "wb") as handle:  # what a stock in-place torch.save does
        handle.write(b"checkpoint at update 5100")
    assert (backups / "model_5000.pt").read_bytes() == b"checkpoint at update 5000"
