"""The one call the CLI makes: find, validate, choose, quarantine, install. Torch-free.

`resolve_checkpoint(settings, apply=False)` (`preflight check`) changes nothing: no quarantine, no install,
no temp removal, no cache write; it reports what a run would do. `apply=True` (`preflight run`) does it.

The outcome fails (nothing moved, nothing removed) when a candidate blocks the choice: an intact checkpoint
for another model (MODEL_PRESET / VOCAB_FILE is wrong, not the file) or a file that cannot be read (it may
hold the newest progress). See select.py for how the choice is made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entrypoint import naming
from entrypoint.checkpoints.cache import VerdictCache, cached
from entrypoint.checkpoints.discover import Candidate, Discovery, Finding, discover
from entrypoint.checkpoints.f5_rule import f5_choice
from entrypoint.checkpoints.install import install_stock
from entrypoint.checkpoints.quarantine import quarantine, rename_no_replace
from entrypoint.checkpoints.select import (
    BLOCK_COMPATIBILITY,
    TRAINING_SOURCES,
    Choice,
    Rejection,
    TempDecision,
    blocking_kind,
    choose,
    judge_temps,
    merge_temps,
    settle_unused_temps,
)
from entrypoint.checkpoints.verdict import KIND_TRAINING, LEVELS, Verdict
from entrypoint.naming import LAST_NAME
from entrypoint.settings import Settings

if TYPE_CHECKING:
    from entrypoint.checkpoints.validate import Expectation

MOVABLE_PROBLEMS = ("dangling-link", "link-loop", "directory", "not-a-file")
SUPERSEDED_LEVEL = "superseded"  # the failed_level of a valid file renamed aside for a newer complete save


@dataclass(frozen=True)
class QuarantineRecord:
    path: str
    moved_to: str | None
    cause: str
    error: str | None = None  # why it could not be moved ("dry run" in check mode)
    blame: str = ""  # the setting whose folder refused the move: "QUARANTINE_DIR" or the file's folder
    superseded: bool = False  # a valid file moved aside for a newer complete save, not a bad one


@dataclass(frozen=True)
class CheckpointOutcome:
    chosen: Verdict | None  # None = scratch (allowed) or failure
    source: str | None  # "last" | "numbered" | "backups" | "pretrained" | None
    load_path: str | None  # the path the trainer must load (after install)
    kind: str  # "training" | "pretrained" | "scratch" | "none"
    update: int | None
    quarantined: tuple[QuarantineRecord, ...]
    problems: tuple[str, ...]
    rejected: tuple[Verdict, ...]
    status: str  # "ok" | "warn" | "fail"
    message: str
    fix: str


class _Run:
    """State of one resolution: what was moved (or would be), what was said."""

    def __init__(self, settings: Settings, apply: bool) -> None:
        self.settings = settings
        self.apply = apply
        self.quarantined: list[QuarantineRecord] = []
        self.problems: list[str] = []
        self.info: list[str] = []  # what was done that is routine (an install): reported, not a warning
        self.gone: set[Path] = set()  # entries moved away (or that would be, in a dry run)
        self.added: set[Path] = set()  # entries created (or that would be)

    def move_away(self, path: Path, cause: str, level: str, details: dict[str, Any] | None = None) -> bool:
        """Quarantine `path`; True when it was moved (or, in a dry run, would be)."""
        superseded = level == SUPERSEDED_LEVEL
        result = quarantine(
            path,
            cause,
            level,
            quarantine_dir=self.settings.quarantine_dir,
            apply=self.apply,
            details=details,
            # A valid file moved aside must not read as damaged.
            suffix=naming.SUPERSEDED_SUFFIX if superseded else naming.QUARANTINE_SUFFIX,
        )
        moved = str(result.moved_to) if result.moved_to is not None else None
        blame = ""
        if result.error and result.error != "dry run":
            blame = "QUARANTINE_DIR" if result.into_quarantine_dir else self._folder_setting(path)
        self.quarantined.append(
            QuarantineRecord(str(path), moved, cause, result.error, blame, superseded=superseded)
        )
        if result.note and result.note not in self.problems:
            self.problems.append(result.note)
        if result.moved_to is not None or result.error == "dry run":
            self.gone.add(path)
            return True
        return False

    def _folder_setting(self, path: Path) -> str:
        if self.settings.backup_dir is not None and path.parent == self.settings.backup_dir:
            return "BACKUP_DIR"
        return "OUTPUT_DIR"

    def remove_temp(self, decision: TempDecision) -> None:
        path = decision.temp.path
        if not self.apply:
            self.problems.append(f"would remove {path}: {decision.reason}")
            self.gone.add(path)
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            self.problems.append(f"could not remove {path} ({error.strerror}): {decision.reason}")
            return
        self.gone.add(path)
        self.problems.append(f"removed {path}: {decision.reason}")

    def listing(self, folder: Path) -> list[str]:
        """The folder as it is, or (dry run) as it would be after this run's moves."""
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        if self.apply:
            return names
        names = [name for name in names if folder / name not in self.gone]
        names += [p.name for p in self.added if p.parent == folder and p.name not in names]
        return names


def resolve_checkpoint(
    settings: Settings,
    *,
    apply: bool,
    expect: Expectation | None = None,
    validator: Callable[..., Verdict] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckpointOutcome:
    """Choose the checkpoint to load, move bad ones out of the way and make the trainer load the choice."""
    if validator is None:
        from entrypoint.checkpoints.validate import validate_file

        validator = validate_file
    cache = VerdictCache.for_output_dir(settings.output_dir)
    run = _Run(settings, apply)
    run.problems += cache.warnings
    validate = cached(validator, cache)
    final_levels = settings.deep_verify or settings.load_verify

    def check(path: Path, final: bool, reference: int | None) -> Verdict:
        """Quick levels for every candidate; for the one about to be used, CRCs and/or a real load too."""
        return validate(
            path,
            deep=final and settings.deep_verify,
            expect=expect,
            load=final and settings.load_verify,
            reference_size=reference,
            progress=progress if final else None,
        )

    stock = settings.trainer_mode == "stock"
    found = discover(
        settings.checkpoint_sources,
        settings.output_dir,
        settings.backup_dir,
        settings.pretrained_checkpoint,
        folder_copy_first=stock,
    )
    unreadable = [f for f in found.findings if f.problem == "unreadable" and f.source in TRAINING_SOURCES]
    if unreadable:
        return _unreadable(run, unreadable[0].path, unreadable[0].detail)
    decisions = judge_temps(found.temps, check, found.candidates)
    candidates = merge_temps(found.candidates, decisions, settings.checkpoint_sources)
    prefer_newest = settings.prefer_newest and not stock
    strict_reason = ""
    if settings.prefer_newest and stock:
        strict_reason = (
            "TRAINER_MODE=stock keeps that order: F5-TTS loads model_last.pt whenever it exists; "
            "use TRAINER_MODE=safe to load the newest"
        )

    def on_reject(rejection: Rejection) -> None:
        candidate, verdict = rejection.candidate, rejection.verdict
        if candidate.promote_to is not None:
            run.remove_temp(_temp_decision(decisions, candidate, f"an unfinished save ({verdict.cause})"))
        elif candidate.movable:
            run.move_away(
                candidate.path, verdict.cause, _failed_level(verdict, rejection.level), verdict.details
            )
        else:
            run.problems.append(f"{candidate.path} is not valid ({verdict.cause}); not moved: it is not ours")

    choice = choose(
        candidates,
        check,
        deep=final_levels,
        prefer_newest=prefer_newest,
        strict_reason=strict_reason,
        on_reject=on_reject,
    )
    if choice.blocker is not None:
        # Nothing is moved or removed: the files are not damaged, the configuration or permissions are.
        return _blocked(run, settings, expect, choice, decisions)
    _handle_findings(run, found.findings)
    for decision in decisions:
        if decision.action == "remove" and decision.temp.path not in run.gone:
            run.remove_temp(decision)
        elif decision.action == "keep":
            run.problems.append(f"left {decision.temp.path} alone: {decision.reason}")
    run.problems += choice.notes
    for decision in settle_unused_temps(decisions, choice):
        if decision.action == "remove" and decision.temp.path not in run.gone:
            run.remove_temp(decision)
        elif (
            decision.action == "keep" and decision.verdict is not None and decision.temp.path not in run.gone
        ) and (choice.candidate is None or decision.temp.path != choice.candidate.path):
            run.problems.append(f"left {decision.temp.path} alone: {decision.reason}")
    rejected = tuple(r.verdict for r in choice.rejected)

    pretrained_unreadable = [f for f in found.findings if f.problem == "unreadable"]
    if pretrained_unreadable and (choice.verdict is None or choice.verdict.kind != KIND_TRAINING):
        _save_cache(run, cache)
        return _unreadable(run, pretrained_unreadable[0].path, pretrained_unreadable[0].detail)
    if choice.candidate is None or choice.verdict is None:
        _save_cache(run, cache)
        return _nothing_valid(run, settings, found, rejected)

    load_path = choice.candidate.path
    if choice.candidate.promote_to is not None:
        load_path = _promote(run, choice.candidate, choice.verdict)

    if stock:
        _clear_stock_folder(run, settings, candidates, choice.candidate, load_path, check)
        _note_strays(run, found)
        result = install_stock(
            settings.output_dir,
            load_path,
            choice.verdict,
            apply=apply,
            names=None if apply else run.listing(settings.output_dir),
        )
        run.info += list(result.actions)
        if not result.ok or result.load_path is None:
            _save_cache(run, cache)
            return _failure(run, rejected, result.message, result.fix)
        load_path = result.load_path
        if apply:
            landed = f5_choice(run.listing(settings.output_dir))
            if landed.name != load_path.name:
                _save_cache(run, cache)
                return _failure(
                    run,
                    rejected,
                    f"F5-TTS's stock trainer would load {landed.name or landed.error or 'nothing'} "
                    f"instead of {load_path}",
                    "move the other checkpoint files out of OUTPUT_DIR or use TRAINER_MODE=safe",
                )

    if stock:
        _note_write_through(run, load_path)
    _save_cache(run, cache)
    return _chosen_outcome(run, choice.verdict, choice.candidate, load_path, rejected)


def _blocked(
    run: _Run,
    settings: Settings,
    expect: Expectation | None,
    choice: Choice,
    decisions: tuple[TempDecision, ...],
) -> CheckpointOutcome:
    blocker = choice.blocker
    assert blocker is not None
    path, verdict = blocker.candidate.path, blocker.verdict
    for decision in decisions:
        if decision.action == "keep":
            run.problems.append(f"left {decision.temp.path} alone: {decision.reason}")
    if blocking_kind(verdict) != BLOCK_COMPATIBILITY:
        return _unreadable(run, path, f"{path}: {verdict.cause}")
    where = {
        "last": "OUTPUT_DIR",
        "numbered": "OUTPUT_DIR",
        "backups": "BACKUP_DIR",
        "pretrained": "PRETRAINED_CHECKPOINT",
    }.get(blocker.candidate.source, "OUTPUT_DIR")
    preset = expect.preset if expect is not None else settings.model_preset
    vocabulary = (
        f"vocabulary {expect.vocab_size} symbols"
        if expect is not None and expect.vocab_size is not None
        else "vocabulary size unknown"
    )
    what = "checkpoints in OUTPUT_DIR are" if where == "OUTPUT_DIR" else f"the checkpoint in {where} is"
    if where == "BACKUP_DIR":
        what = "checkpoints in BACKUP_DIR are"
    return _failure(
        run,
        tuple(r.verdict for r in choice.rejected),
        f"{what} for a different model: {path.name}: {verdict.cause}; MODEL_PRESET={preset}, {vocabulary}",
        "set MODEL_PRESET (and VOCAB_FILE) to what these checkpoints were trained with; "
        f"to start over instead, move them out of {where} (nothing was moved)",
    )


def _unreadable(run: _Run, path: Path, detail: str) -> CheckpointOutcome:
    return _failure(
        run,
        (),
        f"{detail}; it may hold the newest training progress, so no older checkpoint is chosen past it",
        f"make {path} readable by uid {os.getuid()} (chown/chmod), or move it away if it is not needed",
    )


def _note_write_through(run: _Run, load_path: Path) -> None:
    """F5-TTS's stock trainer rewrites model_last.pt in place: through a link, into another file."""
    if load_path.name != LAST_NAME:
        return
    try:
        linked = load_path.is_symlink() or load_path.stat().st_nlink > 1
    except OSError:
        return
    if linked:
        run.problems.append(
            f"{load_path} is a link: F5-TTS's stock trainer will overwrite the file it points to when it "
            "saves; replace the link with a copy to keep that file"
        )


def _failed_level(verdict: Verdict, asked: str) -> str:
    """The first validation level the file did not pass."""
    recorded = verdict.details.get("failed_level")
    if isinstance(recorded, str) and recorded:
        return recorded
    for level in LEVELS:
        if level not in verdict.levels:
            return level
    return asked


def _temp_decision(decisions: tuple[TempDecision, ...], candidate: Candidate, reason: str) -> TempDecision:
    for decision in decisions:
        if decision.temp.path == candidate.path:
            return TempDecision(decision.temp, "remove", reason, decision.verdict)
    raise LookupError(candidate.path)


def _handle_findings(run: _Run, findings: tuple[Finding, ...]) -> None:
    for finding in findings:
        if finding.movable and finding.problem in MOVABLE_PROBLEMS:
            run.move_away(finding.path, finding.detail, "structure")
        else:
            run.problems.append(finding.detail)


def _promote(run: _Run, candidate: Candidate, verdict: Verdict) -> Path:
    """Finish the interrupted save: rename the complete temp file to its final name.

    A file already under that name was chosen against (invalid, or an older update): when it is still there
    it is renamed aside (never deleted), with a reason file, before the temp file takes the name.
    """
    final = candidate.promote_to
    assert final is not None
    if os.path.lexists(final) and final not in run.gone:
        cause = (
            f"superseded by a newer complete save: {candidate.path.name} holds update {verdict.update}; "
            "this file is intact and older, kept here in case it is wanted"
        )
        if not run.move_away(final, cause, SUPERSEDED_LEVEL):
            run.problems.append(
                f"using {candidate.path} as is: {final.name} exists and could not be moved aside"
            )
            return candidate.path
        run.problems.append(f"{'would move' if not run.apply else 'moved'} {final} aside: {cause}")
    if not run.apply:
        run.problems.append(
            f"would rename {candidate.path} to {final} (a complete save that was not renamed)"
        )
        run.gone.add(candidate.path)
        run.added.add(final)
        return final
    try:
        rename_no_replace(candidate.path, final)
    except OSError as error:
        run.problems.append(
            f"could not rename {candidate.path} to {final.name} ({error.strerror}); using it as is"
        )
        return candidate.path
    run.problems.append(f"renamed {candidate.path} to {final} (a complete save that was not renamed)")
    return final


def _clear_stock_folder(
    run: _Run,
    settings: Settings,
    candidates: tuple[Candidate, ...],
    chosen: Candidate,
    load_path: Path,
    check: Callable[[Path, bool, int | None], Verdict],
) -> None:
    """Quick-check every other entry F5-TTS's rule could land on; quarantine the bad ones."""
    folder = settings.output_dir
    by_path = {c.path: c for c in candidates}
    seen: set[str] = set()
    for _ in range(len(candidates) + 2):
        result = f5_choice(run.listing(folder))
        names = [n for n in (result.name, *result.ambiguous) if n is not None and n not in seen]
        names = [n for n in names if not _same(folder / n, load_path)]
        if not names:
            return
        for name in names:
            seen.add(name)
            path = folder / name
            candidate = by_path.get(path)
            if candidate is None or candidate is chosen or not os.path.isfile(path):
                continue
            verdict = check(path, False, chosen.size)
            if blocking_kind(verdict) is not None:
                # Not damage (another model, or unreadable): never quarantined.
                run.problems.append(f"{path} was left in place: {verdict.cause}")
            elif not verdict.valid:
                run.move_away(path, verdict.cause, _failed_level(verdict, "quick"), verdict.details)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def _note_strays(run: _Run, found: Discovery) -> None:
    for stray in found.strays:
        if stray not in run.gone:
            run.problems.append(
                f"{stray} is not a checkpoint name the preflight uses, but F5-TTS's stock trainer considers it"
            )


def _save_cache(run: _Run, cache: VerdictCache) -> None:
    if run.apply:
        warning = cache.save()
        if warning:
            run.problems.append(warning)


def _nothing_valid(
    run: _Run, settings: Settings, found: Discovery, rejected: tuple[Verdict, ...]
) -> CheckpointOutcome:
    seen = [f"{Path(v.path).name} ({v.cause})" for v in rejected]
    seen += [f.detail for f in found.findings]
    summary = "; ".join(seen) if seen else "no checkpoint files"
    if settings.allow_scratch and settings.trainer_mode == "stock":
        # F5-TTS's stock trainer starts fresh only when no loadable name is left in its folder.
        left = f5_choice(run.listing(settings.output_dir))
        if not left.starts_fresh:
            return _failure(
                run,
                rejected,
                f"no valid checkpoint ({summary}), but F5-TTS's stock trainer would still try to load "
                f"{left.name or left.error} from {settings.output_dir}",
                "make OUTPUT_DIR writable so bad files can be quarantined, or move them out, "
                "or use TRAINER_MODE=safe",
            )
    if settings.allow_scratch:
        status = "warn" if seen else "ok"
        return _outcome(
            run,
            None,
            None,
            None,
            rejected,
            status,
            f"no valid checkpoint ({summary}); starting from scratch (ALLOW_SCRATCH=true)",
            "" if status == "ok" else "check the quarantined files' .corrupted.json for the causes",
            kind="scratch",
            update=0,
        )
    where = f"OUTPUT_DIR={settings.output_dir}, BACKUP_DIR={settings.backup_dir}"
    pretrained = settings.pretrained_checkpoint or "not set"
    return _failure(
        run,
        rejected,
        f"no valid checkpoint to load ({summary}) in {where}; PRETRAINED_CHECKPOINT {pretrained}",
        "set PRETRAINED_CHECKPOINT to a valid checkpoint, restore a backup into BACKUP_DIR, "
        "or set ALLOW_SCRATCH=true to start from random weights",
    )


def _chosen_outcome(
    run: _Run, verdict: Verdict, candidate: Candidate, load_path: Path, rejected: tuple[Verdict, ...]
) -> CheckpointOutcome:
    training = verdict.kind == KIND_TRAINING and verdict.update is not None
    what = f"update {verdict.update}" if training else "pretrained weights, update 0"
    message = f"loading {load_path} ({what}, from {candidate.source})"
    if load_path != candidate.path:
        message += f", placed from {candidate.path}"
    failed_moves = [q for q in run.quarantined if q.error and q.error != "dry run"]
    invalid = {v.path for v in rejected} | {q.path for q in run.quarantined if not q.superseded}
    if invalid:
        message += f"; {len(invalid)} invalid checkpoint(s) skipped"
    superseded = [q for q in run.quarantined if q.superseded and q.error in (None, "dry run")]
    if superseded:
        verb = "moved" if run.apply else "would move"
        message += f"; {verb} {len(superseded)} older valid checkpoint(s) aside (superseded, kept)"
    if failed_moves:
        message += f"; {len(failed_moves)} could not be quarantined ({failed_moves[0].error})"
    status = "warn" if rejected or run.quarantined or run.problems else "ok"
    bad_moves = [q for q in run.quarantined if not q.superseded]
    fix = ""
    if failed_moves:
        culprits = sorted({q.blame or "OUTPUT_DIR" for q in failed_moves})
        named = " and ".join(_folder_named(run.settings, name) for name in culprits)
        fix = f"make {named} writable so bad files can be quarantined"
    elif bad_moves and all(q.error == "dry run" for q in bad_moves):
        fix = "`preflight run` will quarantine the invalid file(s) listed below; nothing is deleted"
    elif bad_moves:
        fix = (
            "see the .corrupted.json files for causes; delete quarantined files once you no longer need them"
        )
    elif superseded and not run.apply:
        fix = "`preflight run` will move the older valid checkpoint aside (.superseded); nothing is deleted"
    elif superseded:
        fix = "the older checkpoint moved aside is intact (see its .superseded.json); nothing was deleted"
    elif status == "warn":
        fix = "see the problems listed in the report"
    return _outcome(
        run,
        verdict,
        candidate.source,
        str(load_path),
        rejected,
        status,
        message,
        fix,
        kind="training" if training else "pretrained",
        update=verdict.update if training else 0,
    )


def _folder_named(settings: Settings, setting: str) -> str:
    folder = {
        "QUARANTINE_DIR": settings.quarantine_dir,
        "BACKUP_DIR": settings.backup_dir,
        "OUTPUT_DIR": settings.output_dir,
    }.get(setting)
    return f"{setting} ({folder})" if folder is not None else setting


def _failure(run: _Run, rejected: tuple[Verdict, ...], message: str, fix: str) -> CheckpointOutcome:
    """A failed outcome: nothing chosen, nothing to load; `message` says what is wrong, `fix` what to do."""
    return _outcome(run, None, None, None, rejected, "fail", message, fix)


def _outcome(
    run: _Run,
    verdict: Verdict | None,
    source: str | None,
    load_path: str | None,
    rejected: tuple[Verdict, ...],
    status: str,
    message: str,
    fix: str,
    *,
    kind: str = "none",
    update: int | None = None,
) -> CheckpointOutcome:
    if status == "fail":
        verdict, source, kind, update = None, None, "none", None
    return CheckpointOutcome(
        chosen=verdict,
        source=source,
        load_path=load_path,
        kind=kind,
        update=update,
        quarantined=tuple(run.quarantined),
        problems=tuple(run.problems + run.info),
        rejected=rejected,
        status=status,
        message=message,
        fix=fix,
    )
