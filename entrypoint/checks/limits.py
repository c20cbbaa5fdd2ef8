"""Process limits (memlock, stack) and whether signals reach the trainer (PID 1 without an init)."""

from __future__ import annotations

import resource

from entrypoint.checks.result import OK, WARN, CheckResult, human_bytes
from entrypoint.probes.storage import LimitFacts

RECOMMENDED_STACK = 64 * 1024 * 1024
KNOWN_INITS = ("tini", "docker-init", "catatonit", "dumb-init", "podman-init", "s6-svscan", "systemd", "init")


def check_ulimits(facts: LimitFacts, *, gpus: int) -> CheckResult:
    def show(value: int) -> str:
        return "unlimited" if value == resource.RLIM_INFINITY else human_bytes(value)

    values = f"memlock {show(facts.memlock_soft)}, stack {show(facts.stack_soft)}"
    limited_memlock = facts.memlock_soft != resource.RLIM_INFINITY
    small_stack = facts.stack_soft != resource.RLIM_INFINITY and facts.stack_soft < RECOMMENDED_STACK
    if gpus and (limited_memlock or small_stack):
        return CheckResult(
            "ulimits",
            WARN,
            f"{values}: pinned memory and NCCL want memlock unlimited and stack >= 64 MB",
            "compose.yaml ulimits (memlock: -1, stack: 67108864) or docker run --ulimit memlock=-1 "
            "--ulimit stack=67108864",
        )
    return CheckResult("ulimits", OK, values)


def check_init(facts: LimitFacts) -> CheckResult:
    if facts.pid == 1:
        return CheckResult(
            "init",
            WARN,
            "running as PID 1 without an init process: finished DataLoader workers are not reaped and "
            "a signal the trainer does not handle is ignored",
            "set `init: true` in compose.yaml (docker run --init)",
        )
    name = facts.init_name or "unknown"
    if name in KNOWN_INITS:
        return CheckResult("init", OK, f"PID 1 is {name}: signals are forwarded to the trainer")
    return CheckResult("init", OK, f"PID 1 is {name}; the trainer is not PID 1")
