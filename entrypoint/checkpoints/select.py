"""The choice: the first candidate, in priority order, that passes validation.

Every candidate gets the quick levels (structure + schema: a few MB read); only the one that passes them gets
the deep level (every CRC32) before it is used. If it fails deep, it is rejected and the next candidate is
tried. So choosing among several large checkpoints whose newest ones are damaged costs one deep read of
the winner plus a few MB per damaged file.

Unfinished-save temp files (`.<final>.partial-<pid>-<hex>`) are decided here too. The trainer writes a temp
file, fsyncs it and renames it to its final name, so the rename is the commit:
- a temp file that fails validation was cut off mid-write: it is removable;
- a complete temp file can only come from a crash between fsync and rename. It is a candidate placed right
  after its final name: when the final name is missing or bad, it is the newest data and is used (and, in
  a real run, renamed to its final name, which is what the trainer was about to do);
- a complete temp file that was not used is removable only when the checkpoint chosen holds at least its
  update; otherwise it is kept (it may be the newest data) and reported;
- a temp file whose process is still alive is left alone (it may still be written).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from entrypoint import naming
from entrypoint.checkpoints.discover import Candidate, TempFile
from entrypoint.checkpoints.verdict import Verdict

# check(path, final, reference_size) -> Verdict; final: the deeper levels for a file about to be used
Check = Callable[[Path, bool, "int | None"], Verdict]
TRAINING_SOURCES = ("last", "numbered", "backups")


@dataclass(frozen=True)
class Rejection:
    candidate: Candidate
    verdict: Verdict
    level: str  # "quick" | "deep"


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None
    verdict: Verdict | None
    rejected: tuple[Rejection, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TempDecision:
    temp: TempFile
    action: str  # "remove" | "keep" | "candidate"
    reason: str
    verdict: Verdict | None = None


def reference_size(candidate: Candidate, candidates: Sequence[Candidate]) -> int | None:
    """What a healthy file like `candidate` should weigh: the previous numbered one, else the largest sibling."""
    if candidate.source == "pretrained":
        siblings = [c for c in candidates if c.source == "pretrained" and c.path != candidate.path]
    else:
        siblings = [c for c in candidates if c.source in TRAINING_SOURCES and c.path != candidate.path]
        if candidate.update_hint is not None:
            older = [
                c
                for c in siblings
                if c.source == candidate.source
                and c.update_hint is not None
                and c.update_hint < candidate.update_hint
            ]
            if older:
                return max(older, key=lambda c: c.update_hint or 0).size
    sizes = [c.size for c in siblings if c.size > 0]
    return max(sizes) if sizes else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def judge_temps(
    temps: Sequence[TempFile], check: Check, candidates: Sequence[Candidate]
) -> tuple[TempDecision, ...]:
    """Quick-validate each temp file: cut off (remove), alive (keep) or complete (a candidate)."""
    decisions = []
    for temp in temps:
        if _pid_alive(temp.pid):
            decisions.append(TempDecision(temp, "keep", f"process {temp.pid} may still be writing it"))
            continue
        reference = next((c.size for c in candidates if c.path == temp.final), None)
        verdict = check(temp.path, False, reference)
        if verdict.valid:
            decisions.append(TempDecision(temp, "candidate", "a complete save that was not renamed", verdict))
        else:
            decisions.append(TempDecision(temp, "remove", f"an unfinished save ({verdict.cause})", verdict))
    return tuple(decisions)


def merge_temps(
    candidates: Sequence[Candidate], decisions: Sequence[TempDecision], sources: Sequence[str]
) -> tuple[Candidate, ...]:
    """Place each complete temp file right after its final name (or where that name would be)."""
    merged = list(candidates)
    for decision in decisions:
        if decision.action != "candidate":
            continue
        temp = decision.temp
        entry = Candidate(
            temp.path,
            temp.source,
            temp.size,
            naming.numbered_update(temp.final.name),
            None,
            True,
            promote_to=temp.final,
        )
        merged.insert(_insert_at(merged, entry, sources), entry)
    return tuple(merged)


def _insert_at(merged: list[Candidate], entry: Candidate, sources: Sequence[str]) -> int:
    for index, existing in enumerate(merged):
        if existing.path == entry.promote_to:
            return index + 1
    rank = sources.index(entry.source) if entry.source in sources else len(sources)
    for index, existing in enumerate(merged):
        existing_rank = sources.index(existing.source) if existing.source in sources else len(sources)
        if existing_rank > rank:
            return index
        if existing_rank == rank and _older(existing, entry):
            return index
    return len(merged)


def _older(existing: Candidate, entry: Candidate) -> bool:
    if existing.update_hint is None or entry.update_hint is None:
        return False
    return existing.update_hint < entry.update_hint


def choose(
    candidates: Sequence[Candidate],
    check: Check,
    *,
    deep: bool,
    on_reject: Callable[[Rejection], None] | None = None,
) -> Choice:
    """The first candidate passing the quick levels and then (if `deep`) the deep level."""
    rejected: list[Rejection] = []
    for candidate in candidates:
        reference = reference_size(candidate, candidates)
        verdict = check(candidate.path, False, reference)
        level = "quick"
        if verdict.valid and deep:
            verdict = check(candidate.path, True, reference)
            level = "deep"
        if verdict.valid:
            return Choice(
                candidate, verdict, tuple(rejected), tuple(_newer_elsewhere(candidate, verdict, candidates))
            )
        rejection = Rejection(candidate, verdict, level)
        rejected.append(rejection)
        if on_reject is not None:
            on_reject(rejection)
    return Choice(None, None, tuple(rejected))


def _newer_elsewhere(chosen: Candidate, verdict: Verdict, candidates: Sequence[Candidate]) -> list[str]:
    """Names (not read) that suggest a later source holds more progress than the chosen file."""
    if verdict.update is None:
        return []
    notes = []
    # Only candidates after the chosen one: those before it were read and found invalid.
    later = list(candidates)[list(candidates).index(chosen) + 1 :]
    for other in later:
        if (
            other.source in TRAINING_SOURCES
            and other.update_hint is not None
            and other.update_hint > verdict.update
        ):
            notes.append(
                f"{other.path} is named for update {other.update_hint}, newer than the chosen "
                f"{chosen.path} (update {verdict.update}); CHECKPOINT_SOURCES order decided"
            )
            break
    return notes


def settle_unused_temps(decisions: Sequence[TempDecision], choice: Choice) -> tuple[TempDecision, ...]:
    """Complete temp files that were not used: removable when the chosen file holds at least their update."""
    chosen_update = choice.verdict.update if choice.verdict is not None else None
    chosen_path = choice.candidate.path if choice.candidate is not None else None
    settled = []
    for decision in decisions:
        if decision.action != "candidate" or decision.temp.path == chosen_path:
            settled.append(decision)
            continue
        temp_update = decision.verdict.update if decision.verdict is not None else None
        if chosen_update is not None and temp_update is not None and temp_update <= chosen_update:
            settled.append(replace(decision, action="remove", reason=f"a stale save (update {temp_update})"))
        else:
            settled.append(
                replace(
                    decision,
                    action="keep",
                    reason=f"a complete save (update {temp_update}) newer than the checkpoint chosen; kept",
                )
            )
    return tuple(settled)
