"""Audio facts from duration.json (no decoding): total hours, a duration histogram, the shortest and the
longest clips."""

from __future__ import annotations

import bisect
import math
from typing import Any

from entrypoint.checks.result import OK, CheckResult
from entrypoint.readiness.dataset_facts import DatasetFacts

NAME = "audio"
BUCKETS_S = (0.3, 1, 2, 5, 10, 15, 20, 30)  # edges in seconds; F5-TTS trains on 0.3-30 s


def histogram(sorted_durations: list[float]) -> list[dict[str, Any]]:
    """Clips and hours per bucket [low, high); a clip of exactly 30 s counts with the 20-30 s ones, as F5-TTS
    keeps it."""
    edges = (0.0, *BUCKETS_S, math.inf)
    bounds = [0]
    for edge in edges[1:-1]:
        side = bisect.bisect_right if edge == BUCKETS_S[-1] else bisect.bisect_left
        bounds.append(side(sorted_durations, edge))
    bounds.append(len(sorted_durations))
    return [
        {
            "from_s": edges[i],
            "to_s": None if math.isinf(edges[i + 1]) else edges[i + 1],
            "clips": bounds[i + 1] - bounds[i],
            "hours": math.fsum(sorted_durations[bounds[i] : bounds[i + 1]]) / 3600,
        }
        for i in range(len(edges) - 1)
    ]


def audio_facts(facts: DatasetFacts) -> tuple[CheckResult, dict[str, Any]]:
    durations = facts.durations
    if not durations:
        return CheckResult(NAME, OK, "no clips"), {"clips": 0}
    order = sorted(range(len(durations)), key=durations.__getitem__)
    shortest, longest = order[0], order[-1]
    ordered = [durations[i] for i in order]
    middle = ordered[len(order) // 2]
    data = {
        "clips": len(durations),
        "hours": math.fsum(durations) / 3600,
        "median_s": middle,
        "shortest": {"row": shortest, "seconds": durations[shortest], "audio": facts.audio_path(shortest)},
        "longest": {"row": longest, "seconds": durations[longest], "audio": facts.audio_path(longest)},
        "histogram": histogram(ordered),
    }
    message = (
        f"{len(durations)} clips, {data['hours']:.2f} h; {durations[shortest]:.2f}-{durations[longest]:.2f} s "
        f"(median {middle:.2f} s)"
    )
    return CheckResult(NAME, OK, message), data
