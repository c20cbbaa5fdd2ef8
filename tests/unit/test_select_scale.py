"""Choosing among thousands of numbered checkpoints: the work per file must not grow with the folder.

Measured by counting path comparisons (deterministic), not by timing: bench/bench_select.py shows the time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PosixPath

import pytest

from entrypoint.checkpoints.discover import discover
from entrypoint.checkpoints.select import choose, reference_size
from entrypoint.checkpoints.validate import validate_file
from entrypoint.checkpoints.verdict import Verdict


class CountingPath(PosixPath):
    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingPath.comparisons += 1
        return super().__eq__(other)

    def __hash__(self) -> int:
        return super().__hash__()


def _folder_of_cut_off_saves(folder: Path, count: int) -> Path:
    folder.mkdir()
    for number in range(1, count + 1):
        (folder / f"model_{number}.pt").write_bytes(b"PK\x03\x04" + os.urandom(60 + number % 53))
    return folder


@pytest.mark.parametrize("prefer_newest", [True, False])
def test_choosing_among_many_compares_paths_n_log_n_times(tmp_path: Path, prefer_newest: bool) -> None:
    count = 1000
    output = _folder_of_cut_off_saves(CountingPath(tmp_path / "output"), count)
    found = discover(("last", "numbered"), output, None, None)
    assert len(found.candidates) == count and all(isinstance(c.path, CountingPath) for c in found.candidates)
    references: list[int | None] = []

    def check(path: Path, deep: bool, reference: int | None) -> Verdict:
        references.append(reference)
        return validate_file(path, deep=deep, reference_size=reference)

    CountingPath.comparisons = 0
    choice = choose(found.candidates, check, deep=True, prefer_newest=prefer_newest)
    assert choice.candidate is None and len(choice.rejected) == count
    # Quadratic was count**2 (1,000,000); what a sort and a few lookups per file need is far less.
    assert CountingPath.comparisons <= 20 * count * math.log2(count)
    # And the answers are those of the one-at-a-time definition (checked on a sample: it is quadratic).
    assert len(references) == count
    for index in range(0, count, 97):
        assert references[index] == reference_size(found.candidates[index], found.candidates)
