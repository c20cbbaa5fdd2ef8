"""The guards' checks, pure functions of the probes' facts: a crash loop in the run ledger, a GPU that no longer
answers after a failed run, and the older checkpoint copies moved aside (*.superseded) that take disk space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, human_bytes
from entrypoint.ledger import RunRecord, crash_loop
from entrypoint.probes.gpu import GpuFacts

CRASH_LOOP_FIX = (
    "fix the cause shown in these lines, then start once with `preflight run --force` "
    "(CRASH_LOOP_LIMIT=0 turns the breaker off)"
)


def crash_loop_check(
    runs: Sequence[RunRecord], limit: int, log_lines: Sequence[str], *, force: bool
) -> CheckResult:
    if limit <= 0:
        return CheckResult("crash-loop", OK, "crash-loop breaker off (CRASH_LOOP_LIMIT=0)")
    loop = crash_loop(runs, limit)
    if loop is None:
        return CheckResult("crash-loop", OK, f"no crash loop (the last {limit} starts, run ledger)")
    if force:
        return CheckResult("crash-loop", WARN, loop.message() + " (--force: starting anyway)")
    message = loop.message()
    if log_lines:
        message += "; the last lines of training.log from these runs:\n    " + "\n    ".join(log_lines)
    return CheckResult("crash-loop", FAIL, message, CRASH_LOOP_FIX)


def superseded_check(copies: Sequence[tuple[str, int]]) -> CheckResult:
    """Older model_last.pt copies moved aside when a kill landed between a save's fsync and its rename: intact,
    older than the newer save that replaced them, and full-size; counted so the disk check is not fooled."""
    total = sum(size for _, size in copies)
    names = ", ".join(Path(path).name for path, _ in copies[:3]) + (", ..." if len(copies) > 3 else "")
    message = (
        f"{len(copies)} older checkpoint copies moved aside (*.superseded) hold {human_bytes(total)}: {names}"
    )
    if len(copies) == 1:
        return CheckResult("disk-superseded", OK, message)
    return CheckResult(
        "disk-superseded",
        WARN,
        message,
        "each is older than a verified newer save: keep the newest copy if you like and delete the others "
        "to free the space (nothing deletes them for you)",
    )


GPU_GONE = "gpu-answers"
GPU_GONE_FIX = "the GPU does not answer: reset the VM or the host (a container restart cannot bring it back)"


def gpu_gone_check(runs: Sequence[RunRecord], gpu: GpuFacts) -> CheckResult | None:
    """After a run that failed (a crash, a stall, a kill), GPU device nodes without an answering GPU mean the
    GPU fell off the bus (an Xid, a VM event): restarting the container would only loop."""
    if not runs or not runs[-1].failed or gpu.count or not gpu.device_nodes:
        return None
    why = gpu.error or "nvidia-smi lists no GPU"
    nodes = ", ".join("/dev/" + node for node in gpu.device_nodes[:3])
    return CheckResult(
        GPU_GONE,
        FAIL,
        f"the last run {runs[-1].describe_end()} and now the GPU does not answer ({why}; {nodes} exist)",
        GPU_GONE_FIX,
    )
