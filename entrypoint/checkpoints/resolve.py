"""The checkpoint decision: find, validate and choose (reads only), then the actions that make it true.

`plan_checkpoint` reads the folders and the files (every candidate's quick levels, the deep level of the
one about to be used) and returns a `CheckpointPlan`: the choice, what to tell the user, and the ordered
actions (quarantine, move aside, remove a temp file, place a complete save, and in stock mode the install)
that `preflight run` performs and `preflight check` only lists. `settle` combines the plan with the recorded
outcomes of those actions (or none, for `check`) into the `CheckpointOutcome` the report shows.

The outcome fails (no action planned) when a candidate blocks the choice: an intact checkpoint for another
model (MODEL_PRESET / VOCAB_FILE is wrong, not the file) or a file that cannot be read (it may hold the
newest progress). See select.py for how the choice is made, modes.py for what stock mode adds.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entrypoint import actions as act
from entrypoint.actions import Action, ActionResult
from entrypoint.checkpoints.cache import VerdictCache, cached
from entrypoint.checkpoints.discover import Candidate, Discovery, discover
from entrypoint.checkpoints.quarantine import planned_destination
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
from entrypoint.checkpoints.verdict import FAILURE_CHANGING, KIND_TRAINING, LEVELS, Verdict
from entrypoint.naming import QUARANTINE_SUFFIX, REASON_SUFFIX, SUPERSEDED_SUFFIX
from entrypoint.settings import Settings
from entrypoint.wait import holds_still, recently_modified

if TYPE_CHECKING:
    from entrypoint.checkpoints.validate import Expectation
    from entrypoint.modes import Mode

Check = Callable[[Path, bool, "int | None"], Verdict]


@dataclass(frozen=True)
class QuarantineRecord:
    path: str
    moved_to: str | None
    cause: str
    error: str | None = None  # why it could not be moved ("dry run" in check mode)
    superseded: bool = False  # a valid file moved aside for a newer complete save, not a bad one


@dataclass(frozen=True)
class CheckpointPlan:
    """What was chosen and the actions that make the trainer load it."""

    chosen: Verdict | None
    candidate: Candidate | None
    load_path: Path | None  # the path the trainer must load once the actions are done
    kind: str  # "training" | "pretrained" | "scratch" | "none"
    update: int | None
    rejected: tuple[Verdict, ...]
    notes: tuple[str, ...]  # problems and routine facts, in words
    actions: tuple[Action, ...]
    status: str  # "ok" | "warn" | "fail"
    message: str
    fix: str
    cache: VerdictCache | None = field(default=None, compare=False)  # saved by `run` only


@dataclass(frozen=True)
class CheckpointOutcome:
    chosen: Verdict | None
    source: str | None
    load_path: str | None
    kind: str
    update: int | None
    quarantined: tuple[QuarantineRecord, ...]
    problems: tuple[str, ...]
    rejected: tuple[Verdict, ...]
    status: str
    message: str
    fix: str


class _Planner:
    """The actions and notes of one decision, collected while choosing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.actions: list[Action] = []
        self.notes: list[str] = []

    def moved(self, path: Path) -> bool:
        return any(a.path == path and a.kind in _MOVES for a in self.actions)

    def move_away(
        self,
        path: Path,
        cause: str,
        level: str,
        details: dict[str, Any] | None = None,
        *,
        aside: bool = False,
    ) -> None:
        if self.moved(path):
            return
        suffix = SUPERSEDED_SUFFIX if aside else QUARANTINE_SUFFIX
        target, note = planned_destination(path, self.settings.quarantine_dir, suffix)
        if note and note not in self.notes:
            self.notes.append(note)
        kind = act.MOVE_ASIDE if aside else act.QUARANTINE
        self.actions.append(Action(kind, path, target, cause, level=level, details=dict(details or {})))

    def remove_temp(self, path: Path, reason: str) -> None:
        if not self.moved(path):
            self.actions.append(Action(act.REMOVE_TEMP, path, None, reason))

    def names_after(self, folder: Path) -> list[str]:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            names = []
        return act.names_after(folder, names, self.actions)


_MOVES = (act.QUARANTINE, act.MOVE_ASIDE, act.REMOVE_TEMP, act.PLACE_SAVE)
MOVABLE_PROBLEMS = ("dangling-link", "link-loop", "directory", "not-a-file")


def plan_checkpoint(
    settings: Settings,
    mode: Mode,
    *,
    expect: Expectation | None = None,
    validator: Callable[..., Verdict] | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
) -> CheckpointPlan:
    """Choose the checkpoint to load and plan the actions that make the trainer load it. Reads only.

    `threads`: how many cores the deep check of the chosen file may use (the container's usable CPUs).
    """
    if validator is None:
        from entrypoint.checkpoints.validate import validate_file

        validator = validate_file
    cache = VerdictCache.for_output_dir(settings.output_dir)
    planner = _Planner(settings)
    planner.notes += cache.warnings
    validate = cached(validator, cache)

    def check(path: Path, final: bool, reference: int | None) -> Verdict:
        """Quick levels for every candidate; for the one about to be used, CRCs and/or a real load too.

        A file that fails and was modified moments ago may be a copy still arriving (a restored backup, an
        rsync): it is waited for (WAIT_TIMEOUT_S) and judged again, and while it keeps changing it blocks
        the choice instead of being quarantined.
        """

        def judge() -> Verdict:
            return validate(
                path,
                deep=final and settings.deep_verify,
                expect=expect,
                load=final and settings.load_verify,
                reference_size=reference,
                progress=progress if final else None,
                **({"threads": threads} if final and threads > 1 else {}),
            )

        verdict = judge()
        if verdict.valid or blocking_kind(verdict) is not None or not recently_modified(path):
            return verdict
        if not holds_still(path, settings.wait_timeout_s):
            return still_changing(verdict, settings.wait_timeout_s)
        return judge()

    found = discover(
        settings.checkpoint_sources,
        settings.output_dir,
        settings.backup_dir,
        settings.pretrained_checkpoint,
        folder_copy_first=mode.folder_copy_first,
    )
    plan = _decide(settings, mode, planner, found, check, expect)
    orphans = _reasonless_quarantines(settings)
    notes = (*plan.notes, *orphans)
    status = "warn" if orphans and plan.status == "ok" else plan.status
    return dataclasses.replace(plan, notes=notes, status=status, cache=cache)


_QUARANTINED = re.compile(r".+\.(corrupted|superseded)(\.\d+)?$")


def _reasonless_quarantines(settings: Settings) -> list[str]:
    """Quarantined files whose reason file was never written (a kill between the rename and that write)."""
    notes = []
    for folder in dict.fromkeys(
        f for f in (settings.output_dir, settings.backup_dir, settings.quarantine_dir) if f
    ):
        try:
            names = set(os.listdir(folder))
        except OSError:
            continue
        for name in sorted(names):
            if _QUARANTINED.fullmatch(name) and name + REASON_SUFFIX not in names:
                notes.append(
                    f"{folder / name} was moved aside but its reason file {name}{REASON_SUFFIX} is missing "
                    "(the run was stopped in between); the file is kept as it is"
                )
    return notes


def _decide(
    settings: Settings,
    mode: Mode,
    planner: _Planner,
    found: Discovery,
    check: Check,
    expect: Expectation | None,
) -> CheckpointPlan:
    unreadable = [f for f in found.findings if f.problem == "unreadable" and f.source in TRAINING_SOURCES]
    if unreadable:
        return _unreadable(planner, unreadable[0].path, unreadable[0].detail)
    decisions = judge_temps(found.temps, check, found.candidates)
    candidates = merge_temps(found.candidates, decisions, settings.checkpoint_sources)

    def on_reject(rejection: Rejection) -> None:
        candidate, verdict = rejection.candidate, rejection.verdict
        if candidate.promote_to is not None:
            planner.remove_temp(candidate.path, f"an unfinished save ({verdict.cause})")
        elif candidate.movable:
            planner.move_away(
                candidate.path, verdict.cause, _failed_level(verdict, rejection.level), verdict.details
            )
        else:
            planner.notes.append(
                f"{candidate.path} is not valid ({verdict.cause}); not moved: it is not ours"
            )

    strict_reason = mode.strict_order_reason(settings)
    choice = choose(
        candidates,
        check,
        deep=settings.deep_verify or settings.load_verify,
        prefer_newest=settings.prefer_newest and not strict_reason,
        strict_reason=strict_reason,
        on_reject=on_reject,
    )
    if choice.blocker is not None:
        # Nothing is moved or removed: the files are not damaged, the configuration or permissions are.
        return _blocked(planner, settings, expect, choice, decisions)
    for finding in found.findings:
        if finding.movable and finding.problem in MOVABLE_PROBLEMS:
            planner.move_away(finding.path, finding.detail, "structure")
        else:
            planner.notes.append(finding.detail)
    _temps_first_pass(planner, decisions)
    planner.notes += choice.notes
    _temps_after_choice(planner, decisions, choice)
    rejected = tuple(r.verdict for r in choice.rejected)

    pretrained_unreadable = [f for f in found.findings if f.problem == "unreadable"]
    if pretrained_unreadable and (choice.verdict is None or choice.verdict.kind != KIND_TRAINING):
        return _unreadable(planner, pretrained_unreadable[0].path, pretrained_unreadable[0].detail)
    if choice.candidate is None or choice.verdict is None:
        return _nothing_valid(planner, settings, mode, found, rejected)

    load_path = choice.candidate.path
    if choice.candidate.promote_to is not None:
        load_path = _place_save(planner, choice.candidate, choice.verdict)
    arranged = mode.arrange(planner, settings, found, candidates, choice, load_path, check)
    if isinstance(arranged, str):
        message, fix = arranged.split("\n", 1)
        return _failure(planner, rejected, message, fix)
    return _chosen(planner, choice.verdict, choice.candidate, arranged, rejected)


def _temps_first_pass(planner: _Planner, decisions: Sequence[TempDecision]) -> None:
    for decision in decisions:
        if decision.action == "remove":
            planner.remove_temp(decision.temp.path, decision.reason)
        elif decision.action == "keep":
            planner.notes.append(f"left {decision.temp.path} alone: {decision.reason}")


def _temps_after_choice(planner: _Planner, decisions: Sequence[TempDecision], choice: Choice) -> None:
    chosen_path = choice.candidate.path if choice.candidate is not None else None
    for decision in settle_unused_temps(decisions, choice):
        path = decision.temp.path
        if decision.action == "remove":
            planner.remove_temp(path, decision.reason)
        elif (
            decision.action == "keep"
            and decision.verdict is not None
            and not planner.moved(path)
            and path != chosen_path
        ):
            planner.notes.append(f"left {path} alone: {decision.reason}")


def _place_save(planner: _Planner, candidate: Candidate, verdict: Verdict) -> Path:
    """Finish the interrupted save: the complete temp file takes its final name.

    A file already under that name was chosen against (invalid, or an older update): when it is still there
    it is moved aside (never deleted), with a reason file, before the temp file takes the name.
    """
    final = candidate.promote_to
    assert final is not None
    if os.path.lexists(final) and not planner.moved(final):
        cause = (
            f"superseded by a newer complete save: {candidate.path.name} holds update {verdict.update}; "
            "this file is intact and older, kept here in case it is wanted"
        )
        planner.move_away(final, cause, "superseded", aside=True)
    planner.actions.append(
        Action(act.PLACE_SAVE, candidate.path, final, "a complete save that was not renamed", required=True)
    )
    return final


def _blocked(
    planner: _Planner,
    settings: Settings,
    expect: Expectation | None,
    choice: Choice,
    decisions: tuple[TempDecision, ...],
) -> CheckpointPlan:
    blocker = choice.blocker
    assert blocker is not None
    path, verdict = blocker.candidate.path, blocker.verdict
    for decision in decisions:
        if decision.action == "keep":
            planner.notes.append(f"left {decision.temp.path} alone: {decision.reason}")
    if verdict.failure == FAILURE_CHANGING:
        return _failure(
            planner,
            (),
            f"{path} is {verdict.cause}; nothing was moved",
            "let the copy finish, then start again (WAIT_TIMEOUT_S sets how long the preflight waits)",
        )
    if blocking_kind(verdict) != BLOCK_COMPATIBILITY:
        return _unreadable(planner, path, f"{path}: {verdict.cause}")
    where = {"backups": "BACKUP_DIR", "pretrained": "PRETRAINED_CHECKPOINT"}.get(
        blocker.candidate.source, "OUTPUT_DIR"
    )
    preset = expect.preset if expect is not None else settings.model_preset
    vocabulary = (
        f"vocabulary {expect.vocab_size} symbols"
        if expect is not None and expect.vocab_size is not None
        else "vocabulary size unknown"
    )
    what = (
        f"checkpoints in {where} are" if where != "PRETRAINED_CHECKPOINT" else f"the checkpoint in {where} is"
    )
    return _failure(
        planner,
        tuple(r.verdict for r in choice.rejected),
        f"{what} for a different model: {path.name}: {verdict.cause}; MODEL_PRESET={preset}, {vocabulary}",
        "set MODEL_PRESET (and VOCAB_FILE) to what these checkpoints were trained with; "
        f"to start over instead, move them out of {where} (nothing was moved)",
    )


def still_changing(verdict: Verdict, waited_s: float) -> Verdict:
    cause = f"still being written: its size or time changed during {waited_s:g} s (a copy in progress?)"
    return dataclasses.replace(verdict, cause=cause, failure=FAILURE_CHANGING)


def _unreadable(planner: _Planner, path: Path, detail: str) -> CheckpointPlan:
    return _failure(
        planner,
        (),
        f"{detail}; it may hold the newest training progress, so no older checkpoint is chosen past it",
        f"make {path} readable by uid {os.getuid()} (chown/chmod), or move it away if it is not needed",
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


def _nothing_valid(
    planner: _Planner, settings: Settings, mode: Mode, found: Discovery, rejected: tuple[Verdict, ...]
) -> CheckpointPlan:
    seen = [f"{Path(v.path).name} ({v.cause})" for v in rejected]
    seen += [f.detail for f in found.findings]
    summary = "; ".join(seen) if seen else "no checkpoint files"
    if settings.allow_scratch:
        blocked = mode.scratch_problem(planner, settings)
        if blocked:
            return _failure(planner, rejected, f"no valid checkpoint ({summary}), but {blocked}", _STOCK_FIX)
        status = "warn" if seen else "ok"
        return _plan(
            planner,
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
        planner,
        rejected,
        f"no valid checkpoint to load ({summary}) in {where}; PRETRAINED_CHECKPOINT {pretrained}",
        "set PRETRAINED_CHECKPOINT to a valid checkpoint, restore a backup into BACKUP_DIR, "
        "or set ALLOW_SCRATCH=true to start from random weights",
    )


_STOCK_FIX = (
    "make OUTPUT_DIR writable so bad files can be quarantined, or move them out, or use TRAINER_MODE=safe"
)


def _chosen(
    planner: _Planner, verdict: Verdict, candidate: Candidate, load_path: Path, rejected: tuple[Verdict, ...]
) -> CheckpointPlan:
    training = verdict.kind == KIND_TRAINING and verdict.update is not None
    what = f"update {verdict.update}" if training else "pretrained weights, update 0"
    message = f"loading {load_path} ({what}, from {candidate.source})"
    if load_path != candidate.path:
        message += f", placed from {candidate.path}"
    quarantines = [a for a in planner.actions if a.kind == act.QUARANTINE]
    invalid = {v.path for v in rejected} | {str(a.path) for a in quarantines}
    if invalid:
        message += f"; {len(invalid)} invalid checkpoint(s) skipped"
    aside = [a for a in planner.actions if a.kind == act.MOVE_ASIDE]
    moves = quarantines or aside
    status = "warn" if rejected or moves or planner.notes else "ok"
    fix = ""
    if quarantines:
        fix = (
            "see the .corrupted.json files for causes; delete quarantined files once you no longer need them"
        )
    elif aside:
        fix = "the older checkpoint moved aside is intact (see its .superseded.json); nothing is deleted"
    elif status == "warn":
        fix = "see the problems listed in the report"
    return _plan(
        planner,
        verdict,
        candidate,
        load_path,
        rejected,
        status,
        message,
        fix,
        kind="training" if training else "pretrained",
        update=verdict.update if training else 0,
    )


def _failure(planner: _Planner, rejected: tuple[Verdict, ...], message: str, fix: str) -> CheckpointPlan:
    """A failed decision: nothing chosen, nothing to load and nothing to do on disk."""
    planner.actions.clear()
    return _plan(planner, None, None, None, rejected, "fail", message, fix)


def _plan(
    planner: _Planner,
    verdict: Verdict | None,
    candidate: Candidate | None,
    load_path: Path | None,
    rejected: tuple[Verdict, ...],
    status: str,
    message: str,
    fix: str,
    *,
    kind: str = "none",
    update: int | None = None,
) -> CheckpointPlan:
    return CheckpointPlan(
        chosen=verdict,
        candidate=candidate,
        load_path=load_path,
        kind=kind,
        update=update,
        rejected=rejected,
        notes=tuple(planner.notes),
        actions=tuple(planner.actions),
        status=status,
        message=message,
        fix=fix,
    )


def settle(
    plan: CheckpointPlan, results: Sequence[ActionResult] | None, settings: Settings
) -> CheckpointOutcome:
    """The outcome the report shows: the plan, with what its actions really did (`results` None: check)."""
    by_action = {id(r.action): r for r in results or ()}
    records: list[QuarantineRecord] = []
    notes = list(plan.notes)
    failed: list[tuple[Action, str]] = []
    for action in plan.actions:
        result = by_action.get(id(action))
        if result is not None and result.note and result.note not in notes:
            notes.append(result.note)
        if result is not None and not result.done:
            failed.append((action, result.error))
        if action.kind not in (act.QUARANTINE, act.MOVE_ASIDE):
            continue
        if result is None:
            records.append(
                QuarantineRecord(
                    str(action.path), None, action.cause, "dry run", action.kind == act.MOVE_ASIDE
                )
            )
        else:
            moved = None if result.landed is None else str(result.landed)
            error = result.error or None
            records.append(
                QuarantineRecord(str(action.path), moved, action.cause, error, action.kind == act.MOVE_ASIDE)
            )
    status, message, fix = plan.status, plan.message, plan.fix
    aside = [r for r in records if r.superseded and r.error in (None, "dry run")]
    if aside:
        verb = "would move" if results is None else "moved"
        message += f"; {verb} {len(aside)} older valid checkpoint(s) aside (superseded, kept)"
    if results is None and any(r.error == "dry run" and not r.superseded for r in records):
        fix = "`preflight run` will quarantine the invalid file(s) listed below; nothing is deleted"
    elif results is None and records:
        fix = "`preflight run` will move the older valid checkpoint aside (.superseded); nothing is deleted"
    moves_failed = [(a, e) for a, e in failed if a.kind in (act.QUARANTINE, act.MOVE_ASIDE)]
    if moves_failed:
        message += f"; {len(moves_failed)} could not be quarantined ({moves_failed[0][1]})"
        culprits = sorted({_blame(settings, a) for a, _ in moves_failed})
        fix = f"make {' and '.join(culprits)} writable so bad files can be quarantined"
        status = "warn" if status == "ok" else status
    for action, error in failed:
        if action.kind == act.REMOVE_TEMP:
            notes.append(f"could not remove {action.path} ({error}): {action.cause}")
    return CheckpointOutcome(
        chosen=plan.chosen,
        source=plan.candidate.source if plan.candidate is not None else None,
        load_path=None if plan.load_path is None else str(plan.load_path),
        kind=plan.kind,
        update=plan.update,
        quarantined=tuple(records),
        problems=tuple(notes),
        rejected=plan.rejected,
        status=status,
        message=message,
        fix=fix,
    )


def _blame(settings: Settings, action: Action) -> str:
    """The setting whose folder refused a move: QUARANTINE_DIR, BACKUP_DIR or OUTPUT_DIR, with its path."""
    if action.target is not None and action.target.parent != action.path.parent:
        return f"QUARANTINE_DIR ({settings.quarantine_dir})"
    if settings.backup_dir is not None and action.path.parent == settings.backup_dir:
        return f"BACKUP_DIR ({settings.backup_dir})"
    return f"OUTPUT_DIR ({settings.output_dir})"


def failed_after_actions(outcome: CheckpointOutcome, message: str, fix: str) -> CheckpointOutcome:
    """The outcome once a required action or the stock landing check failed: nothing will be loaded."""
    return CheckpointOutcome(
        chosen=None,
        source=None,
        load_path=None,
        kind="none",
        update=None,
        quarantined=outcome.quarantined,
        problems=outcome.problems,
        rejected=outcome.rejected,
        status="fail",
        message=message,
        fix=fix,
    )
