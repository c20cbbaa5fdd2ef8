"""The choice: the newest valid training checkpoint (PREFER_NEWEST), or the first valid one in priority order.

PREFER_NEWEST=true (the default): every training candidate (model_last.pt, numbered, backups, complete
unfinished-save temp files) gets the quick levels; those that pass are deep-validated in order of update,
highest first, ties broken by CHECKPOINT_SOURCES order; the first that passes wins. Pretrained weights are
tried (in order) only when no training candidate is valid. PREFER_NEWEST=false: the strict CHECKPOINT_SOURCES
order below. TRAINER_MODE=stock always uses the strict order: F5-TTS's own rule loads model_last.pt whenever
that name exists, so honouring a newer numbered file would mean renaming a valid model_last.pt away behind
the user's back; instead the choice notes that a newer checkpoint exists (a warning).

Two verdicts stop the choice instead of moving on (a `Choice` with `blocker` set, nothing chosen):
- a compatibility failure (an intact file whose tensor shapes do not fit MODEL_PRESET / the vocabulary) is a
  configuration problem, not damage: never quarantined, and never passed over for an older file, pretrained
  weights or scratch (with PREFER_NEWEST, an incompatible file older than the winner is only noted);
- a file that cannot be read (permission denied, an I/O error) may be the newest progress, which the
  trainer's next save would replace: the run must stop until it is readable or moved away.

Every candidate gets the quick levels (structure + schema: a few MB read); only the one that passes them gets
the deep level (every CRC32) before it is used. If it fails deep, it is rejected and the next candidate is
tried. So choosing among several large checkpoints whose newest ones are damaged costs one deep read of
the winner plus a few MB per damaged file.

Unfinished-save temp files (`.<final>.partial-<pid>-<hex>`) are decided here too. The trainer writes a temp
file, fsyncs it and renames it to its final name, so the rename is the commit:
- a temp file that fails validation was cut off mid-write: it is removable (not when it only fails
  compatibility or cannot be read: then it is a candidate, and stops the choice like any other);
- a complete temp file can only come from a crash between fsync and rename. It is a candidate placed right
  after its final name: when the final name is missing or bad, or (PREFER_NEWEST) holds an older update, it
  is the newest data and is used (and, in a real run, renamed to its final name, which is what the trainer
  was about to do). A valid but older file under that final name is never deleted or overwritten: it is
  renamed aside like a quarantined file (`<name>.corrupted`, bytes untouched) with a reason file saying
  "superseded by a newer complete save", then the temp file takes its name;
- a complete temp file that was not used is removable only when the checkpoint chosen holds at least its
  update; otherwise it is kept (it may be the newest data) and reported;
- a temp file whose process is still alive is left alone (it may still be written).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from entrypoint import naming
from entrypoint.checkpoints.discover import Candidate, TempFile
from entrypoint.checkpoints.verdict import FAILURE_CHANGING, FAILURE_SHAPE, FAILURE_UNREADABLE, Verdict

# check(path, final, reference_size) -> Verdict; final: the deeper levels for a file about to be used
Check = Callable[[Path, bool, "int | None"], Verdict]
TRAINING_SOURCES = ("last", "numbered", "backups")
BLOCK_COMPATIBILITY = "compatibility"
BLOCK_UNREADABLE = "unreadable"


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
    blocker: Rejection | None = None  # an incompatible or unreadable file that stops the choice


def blocking_kind(verdict: Verdict) -> str | None:
    """ "compatibility" / "unreadable" for a verdict that must stop the choice; None for valid or damaged."""
    if verdict.valid:
        return None
    return _BLOCKING.get(verdict.failure)


# A file still being written is like one that cannot be read: its verdict is not known yet.
_BLOCKING = {
    FAILURE_SHAPE: BLOCK_COMPATIBILITY,
    FAILURE_UNREADABLE: BLOCK_UNREADABLE,
    FAILURE_CHANGING: BLOCK_UNREADABLE,
}


@dataclass(frozen=True)
class TempDecision:
    temp: TempFile
    action: str  # "remove" | "keep" | "candidate"
    reason: str
    verdict: Verdict | None = None


def reference_size(candidate: Candidate, candidates: Sequence[Candidate]) -> int | None:
    """What a healthy file like `candidate` should weigh: the previous numbered one, else the largest sibling."""
    return ReferenceSizes(candidates).of(candidate)


class ReferenceSizes:
    """reference_size() for many candidates of one list: built once (O(N log N)), then each answer in
    O(log N) instead of a scan of the whole list (which made choosing among N files quadratic)."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        # Per source: the distinct update numbers, sorted, and the size of the first candidate (in list
        # order) holding each, as max() over the list picks the first of equal keys.
        first_of_update: dict[str, dict[int, int]] = {}
        for c in candidates:
            if c.source in TRAINING_SOURCES and c.update_hint is not None:
                first_of_update.setdefault(c.source, {}).setdefault(c.update_hint, c.size)
        self._updates = {source: sorted(sizes) for source, sizes in first_of_update.items()}
        self._size_of_update = first_of_update
        # Per group (pretrained / training): positive sizes, largest first, with their paths, so that the
        # largest sibling is the first entry of another path.
        self._largest: dict[bool, list[tuple[int, Path]]] = {True: [], False: []}
        for c in candidates:
            if c.size > 0 and (c.source == "pretrained" or c.source in TRAINING_SOURCES):
                self._largest[c.source == "pretrained"].append((c.size, c.path))
        for group in self._largest.values():
            group.sort(key=lambda item: item[0], reverse=True)

    def of(self, candidate: Candidate) -> int | None:
        if candidate.source != "pretrained" and candidate.update_hint is not None:
            updates = self._updates.get(candidate.source, [])
            below = bisect.bisect_left(updates, candidate.update_hint)
            if below:
                return self._size_of_update[candidate.source][updates[below - 1]]
        group = self._largest[candidate.source == "pretrained"]
        return next((size for size, path in group if path != candidate.path), None)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        # OverflowError: a number no pid_t holds, so no process has it.
        return False
    except PermissionError:
        return True
    return True


def judge_temps(
    temps: Sequence[TempFile], check: Check, candidates: Sequence[Candidate]
) -> tuple[TempDecision, ...]:
    """Quick-validate each temp file: cut off (remove), alive (keep) or complete (a candidate)."""
    decisions = []
    size_at: dict[Path, int] = {}
    for c in candidates:
        size_at.setdefault(c.path, c.size)
    for temp in temps:
        if _pid_alive(temp.pid):
            decisions.append(TempDecision(temp, "keep", f"process {temp.pid} may still be writing it"))
            continue
        reference = size_at.get(temp.final)
        verdict = check(temp.path, False, reference)
        if verdict.valid or blocking_kind(verdict) is not None:
            # Complete (or not ours to judge): never removed; the choice decides.
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
    prefer_newest: bool = False,
    strict_reason: str = "",
) -> Choice:
    """The winner (see the module docstring); `on_reject` is called for each rejected file unless blocked.

    strict_reason: why the strict order is used although PREFER_NEWEST is on (said in the note about a newer
    checkpoint); empty when the strict order was asked for.
    """
    if prefer_newest:
        choice = _choose_newest(candidates, check, deep=deep)
    else:
        choice = _choose_in_order(candidates, check, deep=deep, strict_reason=strict_reason)
    if choice.blocker is None and on_reject is not None:
        for rejection in choice.rejected:
            on_reject(rejection)
    return choice


def _choose_in_order(
    candidates: Sequence[Candidate], check: Check, *, deep: bool, strict_reason: str = ""
) -> Choice:
    rejected: list[Rejection] = []
    sizes = ReferenceSizes(candidates)
    for candidate in candidates:
        verdict, level = _validate(candidate, sizes, check, deep)
        if verdict.valid:
            notes = _newer_elsewhere(candidate, verdict, candidates, strict_reason)
            return Choice(candidate, verdict, tuple(rejected), tuple(notes))
        rejection = Rejection(candidate, verdict, level)
        if blocking_kind(verdict) is not None:
            return Choice(None, None, tuple(rejected), blocker=rejection)
        rejected.append(rejection)
    return Choice(None, None, tuple(rejected))


def _validate(candidate: Candidate, sizes: ReferenceSizes, check: Check, deep: bool) -> tuple[Verdict, str]:
    reference = sizes.of(candidate)
    verdict = check(candidate.path, False, reference)
    if verdict.valid and deep:
        return check(candidate.path, True, reference), "deep"
    return verdict, "quick"


def _choose_newest(candidates: Sequence[Candidate], check: Check, *, deep: bool) -> Choice:
    """Quick levels for every training candidate, then the deep level by update, highest first."""
    training = [c for c in candidates if c.source in TRAINING_SOURCES]
    rejected: list[Rejection] = []
    passed: list[tuple[int, Candidate, Verdict]] = []  # (position, candidate, quick verdict)
    incompatible: list[tuple[int, Rejection]] = []
    sizes = ReferenceSizes(candidates)
    for position, candidate in enumerate(training):
        verdict = check(candidate.path, False, sizes.of(candidate))
        kind = blocking_kind(verdict)
        if verdict.valid:
            passed.append((position, candidate, verdict))
        elif kind == BLOCK_UNREADABLE:
            # Its update is unknown: it may be the newest progress.
            return Choice(None, None, tuple(rejected), blocker=Rejection(candidate, verdict, "quick"))
        elif kind == BLOCK_COMPATIBILITY:
            incompatible.append((position, Rejection(candidate, verdict, "quick")))
        else:
            rejected.append(Rejection(candidate, verdict, "quick"))
    # Highest update first; at an equal update the earlier in CHECKPOINT_SOURCES order (the list's order).
    ranked: list[tuple[int, int, Candidate | Rejection, Verdict]] = [
        (-_update_of(v), p, c, v) for p, c, v in passed
    ] + [(-_update_of(r.verdict), p, r, r.verdict) for p, r in incompatible]
    ranked.sort(key=lambda item: (item[0], item[1]))
    for _rank, _position, entry, quick in ranked:
        if isinstance(entry, Rejection):
            return Choice(None, None, tuple(rejected), blocker=entry)
        verdict = quick
        if deep:
            verdict = check(entry.path, True, sizes.of(entry))
        if verdict.valid:
            notes = [
                f"{r.candidate.path} is for a different model ({r.verdict.cause}); left in place"
                for _p, r in incompatible
            ]
            return Choice(entry, verdict, _in_order(rejected, candidates), tuple(notes))
        rejection = Rejection(entry, verdict, "deep")
        if blocking_kind(verdict) is not None:
            return Choice(None, None, _in_order(rejected, candidates), blocker=rejection)
        rejected.append(rejection)
    rest = [c for c in candidates if c.source not in TRAINING_SOURCES]
    fallback = _choose_in_order(rest, check, deep=deep) if rest else Choice(None, None, ())
    return replace(fallback, rejected=_in_order(rejected, candidates) + fallback.rejected)


def _in_order(rejected: list[Rejection], candidates: Sequence[Candidate]) -> tuple[Rejection, ...]:
    """Rejections in CHECKPOINT_SOURCES order (as reported), whatever order they were found in."""
    position = {c.path: i for i, c in enumerate(candidates)}
    return tuple(sorted(rejected, key=lambda r: position.get(r.candidate.path, len(position))))


def _update_of(verdict: Verdict) -> int:
    return verdict.update if verdict.update is not None else -1


def _newer_elsewhere(
    chosen: Candidate, verdict: Verdict, candidates: Sequence[Candidate], strict_reason: str = ""
) -> list[str]:
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
                + (f" ({strict_reason})" if strict_reason else "")
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
