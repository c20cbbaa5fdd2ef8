"""Shared memory against the DataLoader workers: too little gives "DataLoader worker ... killed by signal:
Bus error" hours into a run."""

from __future__ import annotations

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, human_bytes
from entrypoint.probes.storage import ShmFacts

DOCKER_DEFAULT_SHM = 64 * 1024 * 1024
FIX = (
    "give the container more shared memory: SHM_SIZE in .env (compose.yaml's shm_size), "
    "or `ipc: host` in compose.yaml (docker run --shm-size=8g / --ipc=host)"
)


def check_shm(facts: ShmFacts, *, workers_total: int, per_worker_mb: int) -> CheckResult:
    need = workers_total * per_worker_mb * 1024 * 1024
    if not facts.exists:
        return CheckResult(
            "shm", FAIL, f"{facts.path} does not exist: DataLoader workers cannot share batches", FIX
        )
    size = human_bytes(facts.total_bytes)
    what = f"{facts.path} {size} for {workers_total} DataLoader worker(s) (~{human_bytes(need)} wanted)"
    if facts.total_bytes < need:
        default_note = " (the Docker default)" if facts.total_bytes == DOCKER_DEFAULT_SHM else ""
        return CheckResult(
            "shm", WARN, f"{what}: too small{default_note}, workers may die with a bus error", FIX
        )
    return CheckResult("shm", OK, what)
