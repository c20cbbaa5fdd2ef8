"""The CPU plan: usable CPUs from the probe's limits, then DataLoader workers and torch threads."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from entrypoint.cpu_plan import plan_cpu
from entrypoint.probes.cpu import CpuFacts, CpuLimit, probe_cpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroups"


def facts(*limits: tuple[float, str]) -> CpuFacts:
    return CpuFacts(
        limits=tuple(CpuLimit(cpus, kind, f"{kind} source {cpus}") for cpus, kind in limits), notes=()
    )


AFFINITY_4 = facts((4, "affinity"))


def test_tightest_limit_wins_and_names_its_source() -> None:
    plan = plan_cpu(
        facts((16, "affinity"), (3, "cgroup-v2"), (1, "cgroup-v2")),
        override=None,
        reserve=0,
        requested_workers=8,
    )
    assert (plan.usable, plan.usable_exact, plan.source) == (1, 1.0, "cgroup-v2 source 1")


def test_fraction_is_floored_and_the_note_says_why() -> None:
    plan = plan_cpu(facts((8, "affinity"), (2.5, "cgroup-v1")), override=None, reserve=0, requested_workers=8)
    assert plan.usable == 2
    assert plan.usable_exact == 2.5
    assert "2.5 CPUs rounded down to 2" in plan.notes[0]
    assert "CFS quota" in plan.notes[0]


@pytest.mark.parametrize("exact", [0.01, 0.5, 0.99])
def test_under_one_cpu_counts_as_one(exact: float) -> None:
    plan = plan_cpu(
        facts((2, "affinity"), (exact, "cgroup-v2")), override=None, reserve=1, requested_workers=4
    )
    assert (plan.usable, plan.workers, plan.threads) == (1, 1, 1)
    assert any("less than one CPU; counting 1 CPU" in note for note in plan.notes)


@pytest.mark.parametrize("exact", [3.0000000000000004, 2.9999999999999996, 300000 / 100000])
def test_float_noise_does_not_lose_a_cpu(exact: float) -> None:
    plan = plan_cpu(facts((exact, "cgroup-v2")), override=None, reserve=0, requested_workers=8)
    assert plan.usable == 3
    assert not any("rounded down" in note for note in plan.notes)


def test_whole_numbers_give_no_rounding_note() -> None:
    plan = plan_cpu(AFFINITY_4, override=None, reserve=0, requested_workers=2)
    assert plan.notes == ()


def test_override_wins_even_when_larger_and_says_so() -> None:
    plan = plan_cpu(facts((2, "affinity"), (1.5, "cgroup-v1")), override=8, reserve=1, requested_workers=16)
    assert plan.usable == 8
    assert plan.source.startswith("CPU_LIMIT 8 (explicit override")
    assert plan.workers == 7
    assert any(
        "CPU_LIMIT 8 is above the detected limit of 1.5 CPUs (cgroup-v1 source 1.5)" in n for n in plan.notes
    )


def test_smaller_override_is_floored_without_complaint() -> None:
    plan = plan_cpu(AFFINITY_4, override=2.5, reserve=0, requested_workers=8)
    assert (plan.usable, plan.usable_exact) == (2, 2.5)
    assert not any("above the detected limit" in note for note in plan.notes)


def test_override_below_one_gives_one() -> None:
    plan = plan_cpu(AFFINITY_4, override=0.25, reserve=0, requested_workers=8)
    assert plan.usable == 1


def test_reserve_clamps_workers_with_the_exact_note() -> None:
    plan = plan_cpu(AFFINITY_4, override=None, reserve=1, requested_workers=16)
    assert (plan.workers, plan.requested_workers) == (3, 16)
    assert plan.notes == ("DATALOADER_WORKERS 16 clamped to 3: 4 usable CPUs - CPU_RESERVE 1",)
    assert plan.workers_source == plan.notes[0]


def test_requested_workers_that_fit_are_kept() -> None:
    plan = plan_cpu(AFFINITY_4, override=None, reserve=1, requested_workers=2)
    assert plan.workers == 2
    assert plan.notes == ()
    assert plan.workers_source == "DATALOADER_WORKERS 2 fits: 4 usable CPUs - CPU_RESERVE 1"


@pytest.mark.parametrize("reserve", [4, 5, 100])
def test_reserve_eating_every_cpu_still_leaves_one_worker(reserve: int) -> None:
    plan = plan_cpu(AFFINITY_4, override=None, reserve=reserve, requested_workers=8)
    assert plan.workers == 1
    assert plan.notes == (
        f"DATALOADER_WORKERS 8 clamped to 1: 4 usable CPUs - CPU_RESERVE {reserve} leaves none; "
        "1 worker is the minimum (F5-TTS needs num_workers > 0), so the CPUs will be oversubscribed",
    )


def test_workers_and_threads_are_shared_by_training_processes() -> None:
    plan = plan_cpu(facts((16, "affinity")), override=None, reserve=1, requested_workers=8, processes=3)
    assert (plan.workers, plan.threads, plan.processes) == (5, 5, 3)
    assert plan.notes == (
        "DATALOADER_WORKERS 8 clamped to 5 per training process: 16 usable CPUs - CPU_RESERVE 1 = 15, "
        "shared by 3 training processes",
    )
    assert plan.threads_source == "16 usable CPUs / 3 training processes -> 5 threads each"


def test_more_processes_than_cpus_gives_one_each() -> None:
    plan = plan_cpu(AFFINITY_4, override=None, reserve=1, requested_workers=8, processes=8)
    assert (plan.workers, plan.threads) == (1, 1)
    assert "leaves less than one each" in plan.notes[0]


def test_threads_default_to_usable_cpus() -> None:
    plan = plan_cpu(AFFINITY_4, override=None, reserve=1, requested_workers=2)
    assert plan.threads == 4
    assert plan.threads_source == "4 usable CPUs / 1 training process -> 4 threads each"


def test_explicit_torch_threads_are_kept_and_oversubscription_is_noted() -> None:
    fits = plan_cpu(AFFINITY_4, override=None, reserve=1, requested_workers=1, processes=2, torch_threads=2)
    assert fits.threads == 2
    assert fits.threads_source == "TORCH_THREADS 2 (set explicitly)"
    assert fits.notes == ()
    too_many = plan_cpu(
        AFFINITY_4, override=None, reserve=1, requested_workers=1, processes=2, torch_threads=3
    )
    assert too_many.threads == 3
    assert too_many.notes == (
        "TORCH_THREADS 3 x 2 training processes is more than the 4 usable CPUs; expect the threads to be throttled",
    )


def test_no_limits_at_all_assumes_one_cpu_and_says_to_set_cpu_limit() -> None:
    plan = plan_cpu(CpuFacts(limits=(), notes=("x",)), override=None, reserve=1, requested_workers=4)
    assert (plan.usable, plan.workers, plan.threads) == (1, 1, 1)
    assert any("Set CPU_LIMIT" in note for note in plan.notes)
    plan = plan_cpu(CpuFacts(limits=(), notes=()), override=3, reserve=1, requested_workers=4)
    assert plan.usable == 3


def test_equal_limits_keep_the_first_source() -> None:
    plan = plan_cpu(facts((2, "affinity"), (2, "cgroup-v2")), override=None, reserve=0, requested_workers=1)
    assert plan.source == "affinity source 2"


@pytest.mark.parametrize(
    "arguments",
    [
        {"processes": 0},
        {"reserve": -1},
        {"requested_workers": 0},
        {"torch_threads": 0},
        {"override": 0.0},
        {"override": -2.0},
        {"override": float("nan")},
        {"override": float("inf")},
    ],
)
def test_nonsense_arguments_are_refused(arguments: dict) -> None:
    base = {"override": None, "reserve": 1, "requested_workers": 4}
    with pytest.raises(ValueError):
        plan_cpu(AFFINITY_4, **{**base, **arguments})


def test_invariants_over_a_grid() -> None:
    for cpus, reserve, requested, processes in itertools.product(
        [0.3, 1, 1.5, 2, 4, 7.9, 64], [0, 1, 2, 8], [1, 2, 8, 32], [1, 2, 3, 8]
    ):
        plan = plan_cpu(
            facts((cpus, "cgroup-v2")),
            override=None,
            reserve=reserve,
            requested_workers=requested,
            processes=processes,
        )
        assert plan.usable >= 1 and plan.usable <= max(1, cpus)
        assert 1 <= plan.workers <= requested
        # Workers never take more than the CPUs left after the reserve, except for the 1-worker minimum.
        assert plan.workers * processes <= max(processes, plan.usable - reserve)
        assert plan.threads >= 1 and plan.threads * processes <= max(processes, plan.usable)


@pytest.mark.parametrize(
    ("scenario", "usable", "source_fragment"),
    [
        ("v2-parent-tighter", 1, "kubepods-burstable-pod7c1e5a0b_3d2f_4e6a_9b8c_1a2b3c4d5e6f.slice -> 1 CPU"),
        ("v2-cpuset-smaller-than-quota", 2, "Cpus_allowed_list 2,5"),
        ("v1-docker-bind-mount", 1, "cpu.cfs_quota_us 150000 / cpu.cfs_period_us 100000 in /docker/"),
        ("v2-under-one-cpu", 1, 'cpu.max "50000 100000"'),
        ("v2-max", 4, "Cpus_allowed_list 0-3"),
    ],
)
def test_plans_from_fixture_trees(scenario: str, usable: int, source_fragment: str) -> None:
    base = FIXTURES / scenario
    plan = plan_cpu(probe_cpu(base / "proc", base / "root"), override=None, reserve=1, requested_workers=8)
    assert plan.usable == usable
    assert source_fragment in plan.source
