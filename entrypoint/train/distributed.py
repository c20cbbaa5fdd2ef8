"""Several processes: one process group with a bounded timeout; on several machines one checkpoint read.

On several machines only the process of global rank 0 (on machine 0) opens the checkpoint the preflight
chose; it sends the whole training state (weights, EMA, optimizer, scheduler, update) to every other process
over the process group, so the other machines need no copy and cannot load a different or missing file. A
problem reading it reaches every process as the same error, instead of leaving the others waiting in the
broadcast. The processes of one machine read the same validated file themselves (the preflight's lock keeps
it from changing), which spares a broadcast of the whole state through GPU memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from entrypoint.errors import CheckFailed, PreflightError

# Words torch.distributed's Gloo and NCCL errors use when a peer has gone or a collective timed out.
_PEER_FAILURE_WORDS = (
    "connection closed by peer",
    "connection reset by peer",
    "timed out",
    "timeout",
    "broken pipe",
    "nccl communicator was aborted",
    "socket",
)
# Gloo's words for a pair it closed itself after a collective timed out: no "gloo" in them.
_PEER_FAILURE_PHRASES = ("application timeout caused pair closure",)
_TIMEOUT_WORDS = ("timed out", "timeout")
# "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] ": where in Gloo's source, noise to a user.
_SOURCE_LOCATION = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")


def launched_processes(environ: Mapping[str, str]) -> int:
    """How many processes the launcher (torchrun, through `accelerate launch`) started in all: its
    WORLD_SIZE; 1 when started without one."""
    try:
        return max(1, int(environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_group_running() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def start_process_group(timeout_s: float) -> None:
    """Create the process group (through Accelerate's shared state, which F5-TTS's Accelerator then reuses)
    with COLLECTIVE_TIMEOUT_S instead of torch's default of 30 minutes."""
    import torch
    from accelerate import PartialState

    # Without cpu=True, Accelerate on a machine without a GPU ignores the launcher's WORLD_SIZE and trains
    # each process alone (DistributedType.NO): the processes would never exchange a gradient, and every one
    # of them would be the main process and write model_last.pt.
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s))


def shared_checkpoint(
    accelerator: Any, path: Path | None, read: Callable[[Path], dict[str, Any]]
) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, state) on every process: global rank 0 reads `path` with `read`; the others receive it."""
    import torch.distributed as dist

    payload: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            payload = [
                {"path": None if path is None else str(path), "state": None if path is None else read(path)}
            ]
        except PreflightError as error:
            payload = [{"error": error.message, "fix": error.fix}]
    dist.broadcast_object_list(payload, src=0)
    received = payload[0]
    if "error" in received:
        raise CheckFailed(received["error"], received["fix"])
    chosen = received["path"]
    return (None if chosen is None else Path(chosen)), received["state"]


def is_peer_failure(error: BaseException) -> bool:
    """True for the errors a collective raises when another machine died or stopped answering."""
    names = {type(error).__name__ for error in _chain(error)}
    if names & {"DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = " ".join(str(item).lower() for item in _chain(error))
    if any(phrase in text for phrase in _PEER_FAILURE_PHRASES):
        return True
    return ("gloo" in text or "nccl" in text) and any(word in text for word in _PEER_FAILURE_WORDS)


def describe_peer_failure(error: BaseException, timeout_s: float) -> tuple[str, bool]:
    """(what happened, in a few words; whether this machine waited COLLECTIVE_TIMEOUT_S in vain) for an error
    that is_peer_failure accepted. A machine that hangs (a frozen VM) is only seen by the timeout; one that
    died closes its connections at once."""
    first = (
        next((line.strip() for line in str(error).splitlines() if line.strip()), "") or type(error).__name__
    )
    first = _SOURCE_LOCATION.sub("", first)[:200]
    text = " ".join(str(item).lower() for item in _chain(error))
    if any(word in text for word in _TIMEOUT_WORDS):
        return f"no answer within COLLECTIVE_TIMEOUT_S={timeout_s:g} s ({first})", True
    return first, False


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
