"""The CPU probe on fixture trees: copies of real /proc/self and /sys/fs/cgroup files, one folder per scenario
(see tests/fixtures/cgroups/README.md for where each one comes from)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from entrypoint.probes.cpu import CpuFacts, probe_cpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroups"
DOCKER_ID = "4f1c9a2e7d3b8c05e6a1f27d9b3c4e8a0f5d6c7b8a9e0f1a2b3c4d5e6f708192"
POD = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c1e5a0b_3d2f_4e6a_9b8c_1a2b3c4d5e6f.slice"


def probe(scenario: str | Path, affinity: int | None = None) -> CpuFacts:
    base = scenario if isinstance(scenario, Path) else FIXTURES / scenario
    return probe_cpu(proc_root=base / "proc", fs_root=base / "root", affinity=affinity)


def summary(facts: CpuFacts) -> list[tuple[float, str]]:
    return [(limit.cpus, limit.kind) for limit in facts.limits]


# scenario -> (limits as (cpus, kind), a fragment of each limit's source, fragments expected in the notes)
CASES: dict[str, tuple[list[tuple[float, str]], list[str], list[str]]] = {
    # this machine as it is: cpu on v1 at the hierarchy root (quota -1), cgroup2 at /sys/fs/cgroup/unified
    "v1-hybrid-unlimited": ([(2, "affinity")], ["Cpus_allowed_list 0-1"], []),
    # host cgroup namespace, own cgroup unlimited, its parent limited: only a walk upwards sees it
    "v1-hostns-parent-limit": (
        [(2, "affinity"), (1.0, "cgroup-v1")],
        ["0-1", "cpu.cfs_quota_us 100000 / cpu.cfs_period_us 100000 in /training -> 1 CPU"],
        [],
    ),
    # Docker without a cgroup namespace: the container's cgroup bind-mounted over the hierarchy
    "v1-docker-bind-mount": (
        [(2, "affinity"), (1.5, "cgroup-v1")],
        ["0-1", f"cpu.cfs_quota_us 150000 / cpu.cfs_period_us 100000 in /docker/{DOCKER_ID} -> 1.5 CPUs"],
        [],
    ),
    "v1-docker-cpu-cpuacct": (
        [(8, "affinity"), (2.5, "cgroup-v1")],
        ["0-7", f"cpu.cfs_quota_us 250000 / cpu.cfs_period_us 100000 in /docker/{DOCKER_ID} -> 2.5 CPUs"],
        [],
    ),
    # private cgroup namespace, cgroup file system mounted inside it: path "/" and mount root "/"
    "v1-private-cgroupns": (
        [(2, "affinity"), (1.5, "cgroup-v1")],
        ["0-1", "cpu.cfs_quota_us 150000 / cpu.cfs_period_us 100000 in / (cgroup namespace root)"],
        [],
    ),
    # path "/" while the mount root is the container's cgroup
    "v1-nsroot-mount-root-container": (
        [(2, "affinity"), (1.5, "cgroup-v1")],
        ["0-1", f"in /docker/{DOCKER_ID} -> 1.5 CPUs"],
        [],
    ),
    # namespace made after the mount: the mount shows a cgroup above ours ("/../.."), ours is unknowable
    "v1-private-cgroupns-stale-mount": (
        [(2, "affinity")],
        ["0-1"],
        ["cgroup / is not visible under /sys/fs/cgroup/cpu (root /../..)"],
    ),
    "v1-own-cgroup-missing": (
        [(2, "affinity")],
        ["0-1"],
        [f"cgroup directory /sys/fs/cgroup/cpu/docker/{DOCKER_ID} does not exist"],
    ),
    "v1-period-missing": (
        [(2, "affinity"), (1.5, "cgroup-v1")],
        ["0-1", "cpu.cfs_quota_us 150000 / default period 100000 in /training -> 1.5 CPUs"],
        ["/sys/fs/cgroup/cpu/training/cpu.cfs_period_us could not be read (missing)"],
    ),
    "v1-quota-missing": (
        [(2, "affinity")],
        ["0-1"],
        ["/sys/fs/cgroup/cpu/training/cpu.cfs_quota_us could not be read (missing)"],
    ),
    "v1-garbage": (
        [(2, "affinity")],
        ["0-1"],
        [
            "/sys/fs/cgroup/cpu/training/trainer/cpu.cfs_quota_us holds 'banana', not a number",
            "/sys/fs/cgroup/cpu/training/cpu.cfs_period_us holds '0', not a positive number",
        ],
    ),
    "v1-cpu-not-mounted": (
        [(2, "affinity")],
        ["0-1"],
        ["no cgroup v1 mount with the cpu controller"],
    ),
    "cpuset-taskset": ([(1, "affinity")], ["Cpus_allowed_list 1 in /proc/self/status -> 1 CPU"], []),
    # hybrid host whose cpu controller lives on the unified tree; the `0::` line is not the last one
    "hybrid-v2-cpu-unified": (
        [(2, "affinity"), (2.5, "cgroup-v2")],
        ["0-1", 'cpu.max "250000 100000" in /training.slice/trainer.service -> 2.5 CPUs'],
        [],
    ),
    "v2-private-cgroupns": (
        [(2, "affinity"), (1.5, "cgroup-v2")],
        ["0-1", 'cpu.max "150000 100000" in / (cgroup namespace root) -> 1.5 CPUs'],
        [],
    ),
    # host cgroup namespace: /sys/fs/cgroup is the host's root, which has no cpu.max
    "v2-host-cgroupns": (
        [(2, "affinity"), (2.0, "cgroup-v2")],
        ["0-1", f'cpu.max "200000 100000" in /system.slice/docker-{DOCKER_ID}.scope -> 2 CPUs'],
        [],
    ),
    "v2-parent-tighter": (
        [(16, "affinity"), (3.0, "cgroup-v2"), (1.0, "cgroup-v2")],
        ["0-15", "cri-containerd-", f'cpu.max "100000 100000" in {POD} -> 1 CPU'],
        [],
    ),
    "v2-cpuset-smaller-than-quota": (
        [(2, "affinity"), (4.0, "cgroup-v2")],
        ["Cpus_allowed_list 2,5", 'cpu.max "400000 100000"'],
        [],
    ),
    "v2-max": ([(4, "affinity")], ["0-3"], []),
    "v2-under-one-cpu": ([(2, "affinity"), (0.5, "cgroup-v2")], ["0-1", "-> 0.5 CPUs"], []),
    "v2-quota-without-period": (
        [(2, "affinity"), (1.5, "cgroup-v2")],
        ["0-1", 'cpu.max "150000" (period defaults to 100000) in / (cgroup namespace root) -> 1.5 CPUs'],
        [],
    ),
    "v2-garbage": (
        [(2, "affinity")],
        ["0-1"],
        [
            "cri-containerd-9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d.scope/cpu.max "
            "holds '', not 'quota period'",
            "holds '150000 0': the period is not a positive number",
            "holds 'lots of words here', not 'quota period'",
            "holds 'abc 100000': the quota is not a number",
        ],
    ),
    "garbage-proc-files": (
        [(4, "online"), (3.0, "cgroup-v2")],
        ["/sys/devices/system/cpu/online 0-3 -> 4 CPUs", 'cpu.max "300000 100000"'],
        [
            "Cpus_allowed_list 'x-y' in /proc/self/status is not a CPU list",
            "/proc/self/cgroup line 'this is not a cgroup line' is not 'id:controllers:path'",
            "1 line(s) of /proc/self/mountinfo could not be parsed",
        ],
    ),
    "missing-proc-files": (
        [(4, "online")],
        ["/sys/devices/system/cpu/online 0-3"],
        [
            "/proc/self/status has no Cpus_allowed_list line",
            "/proc/self/cgroup could not be read (missing)",
        ],
    ),
}


def test_every_fixture_folder_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(CASES)


@pytest.mark.parametrize("scenario", sorted(CASES))
def test_fixture_scenario(scenario: str) -> None:
    limits, sources, notes = CASES[scenario]
    facts = probe(scenario)
    assert summary(facts) == [(float(cpus), kind) for cpus, kind in limits]
    for limit, fragment in zip(facts.limits, sources, strict=True):
        assert fragment in limit.source
    assert len(facts.notes) == len(notes), facts.notes
    for fragment in notes:
        assert any(fragment in note for note in facts.notes), (fragment, facts.notes)


def test_paths_in_messages_are_the_container_view_not_the_fixture_root() -> None:
    facts = probe("v2-garbage")
    assert facts.notes
    assert all(str(FIXTURES) not in text for text in facts.notes)
    assert all(note.startswith("/sys/fs/cgroup/kubepods.slice") for note in facts.notes)


def test_affinity_given_by_the_caller_replaces_the_status_file() -> None:
    facts = probe("v2-parent-tighter", affinity=3)
    assert facts.limits[0].cpus == 3.0
    assert facts.limits[0].kind == "affinity"
    assert "given by the caller" in facts.limits[0].source


def test_nonsense_affinity_falls_back_to_the_online_count() -> None:
    facts = probe("missing-proc-files", affinity=0)
    assert summary(facts) == [(4.0, "online")]
    assert any("given by the caller is 0" in note for note in facts.notes)


def test_real_proc_uses_sched_getaffinity() -> None:
    facts = probe_cpu()
    first = facts.limits[0]
    assert first.kind == "affinity"
    assert first.cpus == len(os.sched_getaffinity(0))
    assert first.source.startswith("sched_getaffinity: CPUs ")


def test_nothing_readable_gives_no_limits_and_says_why(tmp_path: Path) -> None:
    facts = probe_cpu(proc_root=tmp_path / "proc", fs_root=tmp_path / "root")
    assert facts.limits == ()
    assert any("/proc/self/status could not be read" in note for note in facts.notes)
    assert any("/sys/devices/system/cpu/online could not be read" in note for note in facts.notes)
    assert any("/proc/self/cgroup could not be read" in note for note in facts.notes)


def copy_scenario(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


@pytest.mark.parametrize(
    ("content", "cpus", "note"),
    [
        ("150000 100000\n", 1.5, None),
        ("max 100000\n", None, None),
        ("max\n", None, None),
        ("200000\n", 2.0, None),
        ("50000 100000\n", 0.5, None),
        ("400000 200000\n", 2.0, None),
        ("0 100000\n", None, None),
        ("150000 0\n", None, "the period is not a positive number"),
        ("150000 -100000\n", None, "the period is not a positive number"),
        ("150000 abc\n", None, "the period is not a positive number"),
        ("1.5 100000\n", None, "the quota is not a number"),
        ("\u00b2 100000\n", None, "the quota is not a number"),
        ("1 2 3\n", None, "not 'quota period'"),
        ("", None, "not 'quota period'"),
    ],
)
def test_cpu_max_contents(tmp_path: Path, content: str, cpus: float | None, note: str | None) -> None:
    base = copy_scenario("v2-private-cgroupns", tmp_path)
    (base / "root/sys/fs/cgroup/cpu.max").write_text(content)
    facts = probe(base)
    quotas = [limit.cpus for limit in facts.limits if limit.kind == "cgroup-v2"]
    assert quotas == ([] if cpus is None else [cpus])
    if note is None:
        assert facts.notes == ()
    else:
        assert len(facts.notes) == 1 and note in facts.notes[0]


@pytest.mark.parametrize(
    ("quota", "period", "cpus", "note"),
    [
        ("150000", "100000", 1.5, None),
        ("-1", "100000", None, None),
        ("-1", "garbage", None, None),  # no quota: the period is never needed
        ("0", "100000", None, None),
        ("300000", "50000", 6.0, None),
        ("150000", "0", None, "not a positive number"),
        ("150000", "", None, "not a positive number"),
        ("", "100000", None, "not a number"),
        ("12x", "100000", None, "not a number"),
    ],
)
def test_v1_quota_and_period_contents(
    tmp_path: Path, quota: str, period: str, cpus: float | None, note: str | None
) -> None:
    base = copy_scenario("v1-private-cgroupns", tmp_path)
    (base / "root/sys/fs/cgroup/cpu/cpu.cfs_quota_us").write_text(quota + "\n")
    (base / "root/sys/fs/cgroup/cpu/cpu.cfs_period_us").write_text(period + "\n")
    facts = probe(base)
    quotas = [limit.cpus for limit in facts.limits if limit.kind == "cgroup-v1"]
    assert quotas == ([] if cpus is None else [cpus])
    if note is None:
        assert facts.notes == ()
    else:
        assert len(facts.notes) == 1 and note in facts.notes[0]


def test_v2_line_anywhere_in_the_file(tmp_path: Path) -> None:
    base = copy_scenario("hybrid-v2-cpu-unified", tmp_path)
    cgroup_file = base / "proc/self/cgroup"
    lines = cgroup_file.read_text().splitlines()
    v2_line = next(line for line in lines if line.startswith("0::"))
    for order in (
        [v2_line, *[x for x in lines if x != v2_line]],
        [*[x for x in lines if x != v2_line], v2_line],
    ):
        cgroup_file.write_text("\n".join(order) + "\n")
        assert [limit.cpus for limit in probe(base).limits] == [2.0, 2.5]


def test_hybrid_with_cpu_on_v1_does_not_read_the_unified_tree(tmp_path: Path) -> None:
    # The kernel binds cpu to one hierarchy; a cpu.max planted on the unified tree must not be believed.
    base = copy_scenario("v1-hybrid-unlimited", tmp_path)
    (base / "root/sys/fs/cgroup/unified/cpu.max").write_text("50000 100000\n")
    assert summary(probe(base)) == [(2.0, "affinity")]


def test_escaped_mount_point(tmp_path: Path) -> None:
    base = copy_scenario("v2-private-cgroupns", tmp_path)
    mountinfo = base / "proc/self/mountinfo"
    mountinfo.write_text(mountinfo.read_text().replace(" /sys/fs/cgroup ", " /sys/fs/my\\040cgroup "))
    (base / "root/sys/fs/cgroup").rename(base / "root/sys/fs/my cgroup")
    assert [limit.cpus for limit in probe(base).limits] == [2.0, 1.5]


def test_cpu_list_formats(tmp_path: Path) -> None:
    base = copy_scenario("v2-max", tmp_path)
    status = base / "proc/self/status"
    original = status.read_text()
    for listed, count in [("0", 1), ("0-3,8-11", 8), ("1,3,5", 3), ("0-63", 64)]:
        status.write_text(original.replace("Cpus_allowed_list:\t0-3", f"Cpus_allowed_list:\t{listed}"))
        assert probe(base).limits[0].cpus == count
    for bad in ["3-1", "", "a", "0-", "1,,2"]:
        status.write_text(original.replace("Cpus_allowed_list:\t0-3", f"Cpus_allowed_list:\t{bad}"))
        facts = probe(base)
        assert facts.limits == ()  # no online file in this fixture either
        assert any("is not a CPU list" in note for note in facts.notes)


def test_v2_without_a_cgroup2_mount_says_so(tmp_path: Path) -> None:
    base = copy_scenario("v2-private-cgroupns", tmp_path)
    mountinfo = base / "proc/self/mountinfo"
    mountinfo.write_text(
        "".join(line for line in mountinfo.read_text().splitlines(True) if "cgroup2" not in line)
    )
    facts = probe(base)
    assert summary(facts) == [(2.0, "affinity")]
    assert len(facts.notes) == 1 and "no cgroup2 file system is mounted" in facts.notes[0]


def test_a_later_mount_on_the_same_point_hides_the_earlier_one(tmp_path: Path) -> None:
    # In v1-docker-bind-mount the host hierarchy (root "/") is mounted first and the container's cgroup is
    # bind-mounted over it; swapping the two lines makes the host hierarchy the visible one, where the
    # container's directory does not exist in this tree.
    base = copy_scenario("v1-docker-bind-mount", tmp_path)
    mountinfo = base / "proc/self/mountinfo"
    lines = mountinfo.read_text().splitlines(True)
    host = next(line for line in lines if line.startswith("48 "))
    container = next(line for line in lines if line.startswith("63 "))
    swapped = [container if line is host else host if line is container else line for line in lines]
    mountinfo.write_text("".join(swapped))
    facts = probe(base)
    assert summary(facts) == [(2.0, "affinity")]
    assert "does not exist" in facts.notes[0]
