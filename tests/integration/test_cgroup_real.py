"""The CPU probe inside real cgroup v1 CFS quotas the kernel enforces.

Creates cgroups under /sys/fs/cgroup/cpu, starts the probe in them as a subprocess, and removes them
after the process has exited. Needs root and a cgroup v1 cpu hierarchy; skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CPU_HIERARCHY = Path("/sys/fs/cgroup/cpu")
REPO = Path(__file__).resolve().parents[2]

PROBE_CODE = """
import dataclasses, json
from entrypoint.probes.cpu import probe_cpu
from entrypoint.cpu_plan import plan_cpu
facts = probe_cpu()
plan = plan_cpu(facts, override=None, reserve=0, requested_workers=64)
print(json.dumps({"facts": dataclasses.asdict(facts), "usable": plan.usable,
                  "usable_exact": plan.usable_exact, "source": plan.source}))
"""


def _skip_unless_cgroups_can_be_made() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    if not (CPU_HIERARCHY / "cpu.cfs_quota_us").is_file():
        pytest.skip(f"no cgroup v1 cpu hierarchy at {CPU_HIERARCHY} (a pure cgroup v2 host?)")


@pytest.fixture
def make_cgroup() -> Iterator:
    """Create cgroups (parents first) and remove them, deepest first, when the test ends."""
    _skip_unless_cgroups_can_be_made()
    created: list[Path] = []

    def make(relative: str, quota_us: int | None = None) -> Path:
        path = CPU_HIERARCHY / relative
        try:
            path.mkdir()
        except OSError as error:
            pytest.skip(f"cannot create cgroup {path}: {error.strerror}")
        created.append(path)
        if quota_us is not None:
            try:
                (path / "cpu.cfs_period_us").write_text("100000")
                (path / "cpu.cfs_quota_us").write_text(str(quota_us))
            except OSError as error:
                # cgroup v1 refuses a quota above an ancestor's, e.g. when this runs in a limited container.
                pytest.skip(f"the kernel refused cpu.cfs_quota_us {quota_us} in {path}: {error.strerror}")
        return path

    yield make
    for path in reversed(created):
        path.rmdir()  # the probe process has exited and been reaped, so the cgroup is empty


def run_probe_in(cgroup: Path) -> dict:
    """Start Python in `cgroup` (the shell moves itself in, then becomes Python) and return its report."""
    result = subprocess.run(
        [
            "sh",
            "-c",
            'echo $$ > "$1" && exec "$2" -c "$3"',
            "sh",
            str(cgroup / "cgroup.procs"),
            sys.executable,
            PROBE_CODE,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_quota_of_own_cgroup_is_found(make_cgroup) -> None:
    name = f"cpu-probe-test-{uuid.uuid4().hex[:12]}"
    cgroup = make_cgroup(name, quota_us=150_000)
    assert (cgroup / "cpu.cfs_quota_us").read_text().strip() == "150000"

    report = run_probe_in(cgroup)

    quotas = [limit for limit in report["facts"]["limits"] if limit["kind"] == "cgroup-v1"]
    assert [limit["cpus"] for limit in quotas] == [1.5]
    assert quotas[0]["source"].startswith(f"cpu.cfs_quota_us 150000 / cpu.cfs_period_us 100000 in /{name}")
    assert report["facts"]["notes"] == []
    # The affinity set is real too: it is the one this machine gives us.
    affinity = report["facts"]["limits"][0]
    assert affinity["kind"] == "affinity" and affinity["cpus"] == len(os.sched_getaffinity(0))
    if len(os.sched_getaffinity(0)) >= 2:
        assert (report["usable"], report["usable_exact"]) == (1, 1.5)
        assert report["source"] == quotas[0]["source"]


def test_tighter_parent_quota_is_found_from_a_nested_child(make_cgroup) -> None:
    parent = f"cpu-probe-test-{uuid.uuid4().hex[:12]}"
    make_cgroup(parent, quota_us=100_000)
    # cgroup v1 refuses a child quota above its parent's, so the child here has none of its own (-1):
    # a reader of the own cgroup only would see no limit at all.
    child = make_cgroup(f"{parent}/trainer", quota_us=None)
    assert (child / "cpu.cfs_quota_us").read_text().strip() == "-1"

    report = run_probe_in(child)

    quotas = [limit for limit in report["facts"]["limits"] if limit["kind"] == "cgroup-v1"]
    assert [limit["cpus"] for limit in quotas] == [1.0]
    assert f"in /{parent} -> 1 CPU" in quotas[0]["source"]
    assert report["usable"] == 1
    assert report["source"] == quotas[0]["source"]


def test_nested_child_and_parent_quotas_are_both_reported(make_cgroup) -> None:
    parent = f"cpu-probe-test-{uuid.uuid4().hex[:12]}"
    make_cgroup(parent, quota_us=150_000)
    child = make_cgroup(f"{parent}/trainer", quota_us=120_000)

    report = run_probe_in(child)

    quotas = [
        (limit["cpus"], limit["source"])
        for limit in report["facts"]["limits"]
        if limit["kind"] == "cgroup-v1"
    ]
    assert [cpus for cpus, _ in quotas] == [1.2, 1.5]
    assert f"in /{parent}/trainer" in quotas[0][1]
    assert f"in /{parent} " in quotas[1][1]
    assert report["usable_exact"] == 1.2 and report["usable"] == 1
