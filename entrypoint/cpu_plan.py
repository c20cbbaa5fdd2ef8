"""Decide how many CPUs the container may use, and from that the DataLoader workers and torch threads.

A pure function of the probe's facts and the settings: no I/O. See docs/cpu-counting.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from entrypoint.probes.cpu import CpuFacts, format_cpus

# quota/period is a float; 300000/100000 must floor to 3 even if it lands a hair below.
_ROUNDING_SLACK = 1e-9


@dataclass(frozen=True)
class CpuPlan:
    """CPU numbers for the trainer, each with its reason."""

    usable: int  # whole CPUs the container may use (>= 1)
    usable_exact: float  # the tightest limit before rounding
    source: str  # the source line of the limit that won (or of the override)
    requested_workers: int
    workers: int  # DataLoader workers PER training process, >= 1 (F5-TTS needs num_workers > 0)
    threads: int  # torch / OMP / MKL threads per training process
    processes: int
    notes: tuple[str, ...]  # clamps, rounding and overrides, in words
    workers_source: str = ""  # why `workers` is what it is
    threads_source: str = ""  # why `threads` is what it is


def plan_cpu(
    facts: CpuFacts,
    *,
    override: float | None,
    reserve: int,
    requested_workers: int,
    processes: int = 1,
    torch_threads: int | None = None,
) -> CpuPlan:
    """Usable CPUs = floor(min(affinity, every quota)) or the override, at least 1; workers and threads
    per training process follow from it.

    The probe's own notes (files it could not read) stay in `facts.notes`; they are not copied here.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, got {reserve}")
    if requested_workers < 1:
        raise ValueError(f"requested_workers must be >= 1, got {requested_workers}")
    if torch_threads is not None and torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {torch_threads}")
    if override is not None and not (override > 0 and math.isfinite(override)):
        raise ValueError(f"override must be a positive number, got {override}")

    notes: list[str] = []
    exact, source = _tightest(facts, override, notes)
    exact = float(exact)
    usable = max(1, math.floor(exact + _ROUNDING_SLACK))
    if exact < 1:
        notes.append(f"{_cpus(exact)} is less than one CPU; counting 1 CPU, the minimum")
    elif usable != exact and not math.isclose(usable, exact):
        notes.append(
            f"{_cpus(exact)} rounded down to {usable}: busy threads on a partial CPU would exceed "
            "the CFS quota and stall until the next period"
        )

    workers, workers_source = _workers(usable, reserve, requested_workers, processes, notes)
    threads, threads_source = _threads(usable, processes, torch_threads, notes)
    return CpuPlan(
        usable=usable,
        usable_exact=exact,
        source=source,
        requested_workers=requested_workers,
        workers=workers,
        threads=threads,
        processes=processes,
        notes=tuple(notes),
        workers_source=workers_source,
        threads_source=threads_source,
    )


def _tightest(facts: CpuFacts, override: float | None, notes: list[str]) -> tuple[float, str]:
    # min() keeps the first of equal limits: affinity, then the own cgroup before its ancestors.
    tightest = min(facts.limits, key=lambda limit: limit.cpus, default=None)
    if override is not None:
        if tightest is not None and override > tightest.cpus + _ROUNDING_SLACK:
            notes.append(
                f"CPU_LIMIT {format_cpus(override)} is above the detected limit of {_cpus(tightest.cpus)} "
                f"({tightest.source}); the override wins, so expect the CPUs to be oversubscribed"
            )
        return float(
            override
        ), f"CPU_LIMIT {format_cpus(override)} (explicit override; wins over cgroups and affinity)"
    if tightest is None:
        notes.append(
            "No CPU limit or CPU count could be read; counting 1 CPU. Set CPU_LIMIT to the CPUs this "
            "container may use."
        )
        return 1.0, "no CPU count could be read; 1 CPU assumed"
    return tightest.cpus, tightest.source


def _workers(usable: int, reserve: int, requested: int, processes: int, notes: list[str]) -> tuple[int, str]:
    budget = usable - reserve
    per_process = max(1, budget // processes)
    workers = min(requested, per_process)
    arithmetic = f"{_cpus(usable, usable=True)} - CPU_RESERVE {reserve}"
    if processes > 1:
        arithmetic += f" = {max(budget, 0)}, shared by {processes} training processes"
    per = " per training process" if processes > 1 else ""
    if budget // processes < 1:
        why = (
            f"{arithmetic} leaves less than one each; 1 worker is the minimum "
            "(F5-TTS needs num_workers > 0), so the CPUs will be oversubscribed"
            if processes > 1
            else f"{arithmetic} leaves none; 1 worker is the minimum (F5-TTS needs num_workers > 0), "
            "so the CPUs will be oversubscribed"
        )
    else:
        why = arithmetic
    if workers < requested:
        text = f"DATALOADER_WORKERS {requested} clamped to {workers}{per}: {why}"
        notes.append(text)
        return workers, text
    return workers, f"DATALOADER_WORKERS {requested}{per} fits: {why}"


def _threads(usable: int, processes: int, torch_threads: int | None, notes: list[str]) -> tuple[int, str]:
    if torch_threads is not None:
        if torch_threads * processes > usable:
            notes.append(
                f"TORCH_THREADS {torch_threads} x {_processes(processes)} is more than the "
                f"{_cpus(usable, usable=True)}; expect the threads to be throttled"
            )
        return torch_threads, f"TORCH_THREADS {torch_threads} (set explicitly)"
    threads = max(1, usable // processes)
    each = f"{threads} thread" + ("" if threads == 1 else "s")
    return threads, f"{_cpus(usable, usable=True)} / {_processes(processes)} -> {each} each"


def _cpus(cpus: float, *, usable: bool = False) -> str:
    kind = " usable" if usable else ""
    return f"{format_cpus(cpus)}{kind} CPU" + ("" if cpus == 1 else "s")


def _processes(processes: int) -> str:
    return f"{processes} training process" + ("" if processes == 1 else "es")
