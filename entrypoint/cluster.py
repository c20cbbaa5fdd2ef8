"""The preflights of several machines meet before any trainer starts, and compare what must be the same.

A small exchange over TCP (one JSON line each way), torch-free: machine 0 listens on MAIN_PROCESS_PORT + 1;
every other machine connects (retried with tenacity until WAIT_TIMEOUT_S), sends its summary (versions,
preset, vocabulary and dataset fingerprints, batch settings, processes) and what it sees of machine 0's
OUTPUT_DIR marker (shared_output), and waits for the verdict. Machine 0 compares each summary with its own and
answers everyone the same: go, or the one line naming the machine and the difference, which stops every node
(exit 3) before a trainer hangs at its first collective.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Mapping
from typing import Any

from entrypoint import __version__, shared_output
from entrypoint.errors import CheckFailed
from entrypoint.machines import file_fingerprint, installed_versions, meeting_port
from entrypoint.settings import Settings

MAX_LINE_BYTES = 1 << 20
REPLY_MARGIN_S = 30.0  # a machine waits this much longer than machine 0 for the verdict
COMPARED_TRAINING = (
    "batch_size",
    "batch_size_type",
    "max_samples",
    "grad_accumulation_steps",
    "learning_rate",
    "max_grad_norm",
    "warmup_updates",
    "epochs",
    "max_updates",
    "seed",
)
UNREACHABLE_FIX = (
    "start machine 0 first (or together); open TCP ports MAIN_PROCESS_PORT and MAIN_PROCESS_PORT+1 on machine 0 "
    "and NCCL's ports between the machines; run with host networking (compose.multinode.yaml); "
    "WAIT_TIMEOUT_S sets how long to try"
)


def machine_summary(settings: Settings, processes: int, mixed_precision: str) -> dict[str, Any]:
    """What every machine must agree on, as plain JSON values, in the order differences are reported."""
    dataset = settings.dataset_dir
    return {
        **{f"version of {name}": value for name, value in installed_versions(__version__).items()},
        "NUM_MACHINES": settings.num_machines,
        "MODEL_PRESET": settings.model_preset,
        "TOKENIZER": settings.tokenizer,
        "vocabulary": file_fingerprint(settings.vocab_path),
        "dataset raw.arrow": file_fingerprint(dataset / "raw.arrow"),
        "dataset duration.json": file_fingerprint(dataset / "duration.json"),
        **{name.upper(): getattr(settings, name) for name in COMPARED_TRAINING},
        "training processes per machine": processes,
        "mixed precision": mixed_precision,
    }


def first_difference(rank: int, theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> str | None:
    """One line naming the machine and the first thing that differs from machine 0; None when all match."""
    for key, value in ours.items():
        other = theirs.get(key, "missing")
        if other != value:
            return f"machine {rank} differs from machine 0: {key} is {other} there, {value} on machine 0"
    return None


def meet(settings: Settings, summary: dict[str, Any], main_facts: dict[str, Any]) -> dict[str, Any]:
    """Meet the other machines; returns machine 0's facts (`main_facts` on machine 0), with `sharing` (the
    machines that share machine 0's OUTPUT_DIR) and, on the other machines, `seen` (what this one saw of
    machine 0's marker). CheckFailed when a machine differs, does not come, or machine 0 cannot be reached."""
    timeout = max(settings.wait_timeout_s, 1.0)
    if settings.machine_rank == 0:
        marker = shared_output.write_marker(settings.output_dir, main_facts.get("checkpoint"))
        sharing = _host(settings, summary, main_facts, timeout, marker)
        return {**main_facts, "sharing": sharing, "compared": marker["checkpoint"]}
    return _join(settings, summary, timeout)


def _host(
    settings: Settings,
    ours: dict[str, Any],
    main_facts: dict[str, Any],
    timeout: float,
    marker: dict[str, Any],
) -> list[int]:
    port = meeting_port(settings)
    expected = set(range(1, settings.num_machines))
    joined: dict[int, socket.socket] = {}
    sharing: list[int] = []
    problem: str | None = None
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET6 if ":" in settings.main_process_ip else socket.AF_INET) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
        except OSError as error:
            raise CheckFailed(
                f"machine 0 cannot listen on port {port} for the other machines: {error.strerror}",
                "free the port (another preflight or trainer still running?) or change MAIN_PROCESS_PORT",
            ) from None
        server.listen(len(expected) + 4)
        try:
            while expected - joined.keys() and time.monotonic() < deadline:
                server.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    connection, address = server.accept()
                except TimeoutError:
                    break
                message = _receive(connection, max(1.0, deadline - time.monotonic()))
                rank = message.get("machine") if isinstance(message, dict) else None
                if not isinstance(rank, int) or rank not in expected or rank in joined:
                    reason = (
                        f"machine {rank} came twice (two machines with MACHINE_RANK={rank}?)"
                        if rank in joined
                        else f"an unexpected peer at {address[0]} sent {str(message)[:80]!r}"
                    )
                    _send(connection, {"ok": False, "message": reason})
                    connection.close()
                    if rank in joined:
                        problem = reason
                        break
                    continue
                joined[rank] = connection
                shares, unlike = shared_output.compare(rank, message.get("storage"), marker)
                sharing += [rank] if shares else []
                problem = problem or first_difference(rank, message.get("summary", {}), ours) or unlike
            missing = sorted(expected - joined.keys())
            if problem is None and missing:
                problem = (
                    f"machine(s) {', '.join(map(str, missing))} did not reach machine 0's preflight on port "
                    f"{port} within {timeout:g} s"
                )
            main = {**main_facts, "sharing": sorted(sharing)}
            reply = {"ok": True, "main": main} if problem is None else {"ok": False, "message": problem}
            for connection in joined.values():
                _send(connection, reply)
        finally:
            for connection in joined.values():
                connection.close()
    if problem is not None:
        raise CheckFailed(problem, _fix_for(problem))
    return sorted(sharing)


def _join(settings: Settings, ours: dict[str, Any], timeout: float) -> dict[str, Any]:
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

    address = (settings.main_process_ip, meeting_port(settings))
    connection: socket.socket | None = None
    last_error = "no answer"
    try:
        for attempt in Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_fixed(0.5),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        ):
            with attempt:
                try:
                    connection = socket.create_connection(address, timeout=5)
                except OSError as error:
                    last_error = error.strerror or type(error).__name__
                    raise
    except OSError:
        raise CheckFailed(
            f"machine 0's preflight at {address[0]}:{address[1]} could not be reached within {timeout:g} s "
            f"({last_error}): it is not running, a firewall blocks the port, or the containers are not on "
            "the host network",
            UNREACHABLE_FIX,
        ) from None
    assert connection is not None
    with connection:
        # Connected: machine 0 wrote its marker before it listened, so it is there to be seen (or not).
        seen = shared_output.look(settings.output_dir)
        _send(connection, {"machine": settings.machine_rank, "summary": ours, "storage": seen})
        reply = _receive(connection, timeout + REPLY_MARGIN_S)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise CheckFailed(
            f"machine 0 at {address[0]}:{address[1]} did not give a verdict ({str(reply)[:80]})",
            UNREACHABLE_FIX,
        )
    if not reply["ok"]:
        message = str(reply.get("message", "machine 0 refused"))
        raise CheckFailed(message, _fix_for(message))
    return {**dict(reply.get("main") or {}), "seen": seen}


def _fix_for(problem: str) -> str:
    if "did not reach" in problem:
        return "start every machine's container; " + UNREACHABLE_FIX
    if "shares OUTPUT_DIR" in problem:
        return shared_output.INCOHERENT_FIX
    if "twice" in problem:
        return "give every machine its own MACHINE_RANK, 0 to NUM_MACHINES-1"
    return "make every machine use the same image, settings, vocabulary and dataset, then start them again"


def _send(connection: socket.socket, message: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):  # that machine has gone; it finds out on its own
        connection.sendall(json.dumps(message).encode() + b"\n")


def _receive(connection: socket.socket, timeout: float) -> Any:
    connection.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) < MAX_LINE_BYTES:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as error:
        return f"nothing ({error.strerror or type(error).__name__})"
    try:
        return json.loads(data.decode("utf-8", "replace") or "null")
    except ValueError:
        return data[:80].decode("utf-8", "replace")


def meet_before_training(settings: Settings, processes: int, mixed_precision: str, chosen: Any) -> None:
    """`preflight run` on several machines, after this machine's own checks: meet the others or stop."""
    if settings.num_machines == 1:
        return
    summary = machine_summary(settings, processes, mixed_precision)
    load_path = getattr(chosen, "load_path", None)
    main = meet(
        settings,
        summary,
        {"checkpoint": load_path if chosen.kind != "none" else None, "update": chosen.update or 0},
    )
    where = main.get("checkpoint") or "no checkpoint (random weights)"
    print(
        f"machines: all {settings.num_machines} machines agree; machine 0 loads {where} at update "
        f"{main.get('update', 0)} and sends the training state to every process",
        flush=True,
    )
    print(_storage_line(settings, main), flush=True)


def _storage_line(settings: Settings, main: dict[str, Any]) -> str:
    sharing = main.get("sharing") or []
    if settings.machine_rank == 0:
        return shared_output.describe_main(sharing, main.get("compared"))
    shared = settings.machine_rank in sharing
    return shared_output.describe(settings.machine_rank, shared, main.get("seen") or {})
