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


def histogram(durations: list[float]) -> list[dict[str, Any]]:
    edges = (0.0, *BUCKETS_S, math.inf)
    counts = [0] * (len(edges) - 1)
    seconds = [0.0] * (len(edges) - 1)
    for value in durations:
        # Buckets are [low, high); a clip of exactly 30 s counts with the 20-30 s ones, as F5-TTS keeps it.
        index = max(0, bisect.bisect_right(edges, value) - 1)
        if value == BUCKETS_S[-1]:
            index -= 1
        counts[index] += 1
        seconds[index] += value
    return [
        {
            "from_s": edges[i],
            "to_s": None if math.isinf(edges[i + 1]) else edges[i + 1],
            "clips": counts[i],
            "hours": seconds[i] / 3600,
        }
        for i in range(len(counts))
    ]


def audio_facts(facts: DatasetFacts) -> tuple[CheckResult, dict[str, Any]]:
    durations = facts.durations
    if not durations:
        return CheckResult(NAME, OK, "no clips"), {"clips": 0}
    order = sorted(range(len(durations)), key=durations.__getitem__)
    shortest, longest = order[0], order[-1]
    middle = durations[order[len(order) // 2]]
    data = {
        "clips": len(durations),
        "hours": math.fsum(durations) / 3600,
        "median_s": middle,
        "shortest": {"row": shortest, "seconds": durations[shortest], "audio": facts.audio_path(shortest)},
        "longest": {"row": longest, "seconds": durations[longest], "audio": facts.audio_path(longest)},
        "histogram": histogram(durations),
    }
    message = (
        f"{len(durations)} clips, {data['hours']:.2f} h; {durations[shortest]:.2f}-{durations[longest]:.2f} s "
        f"(median {middle:.2f} s)"
    )
    return CheckResult(NAME, OK, message), data
