"""`python -m entrypoint.train.launcher --exit-wait-s N [--stop-wait-s S] <accelerate launch options>`: the
launcher of every training with several processes, on one machine or several. It is Accelerate's own
`accelerate launch` (torchrun's elastic agent inside), run in this process, with four differences that matter
when a process or a machine stops and the others must end by themselves:

- **Exit barrier.** After its trainer succeeded, torchrun's agent waits for the agents of the other machines
  before it exits. That wait is 300 s, hard-coded where `torch.distributed.launcher.api.launch_agent` builds its
  `LocalElasticAgent`; neither torchrun nor Accelerate has an option or a variable for it. A machine whose
  trainer saved and stopped because another machine was stopped (`docker stop`, whose launcher leaves without
  the barrier) or failed (a failed agent skips the barrier) would linger five minutes. Here the agent class
  that `launch_agent` builds is a subclass that waits at most N seconds. The other agents need that wait only
  for their own exit: every trainer ends at the same update, and only machine 0 saves.
- **The trainer's exit code.** A trainer that fails makes torchrun raise ChildFailedError, which Accelerate
  lets through as a traceback and exit code 1: a lost machine (3) or a stall (7) would look like a crash. Here
  the launcher exits with the code of the first trainer process that failed, after one line.
- **One line** instead of the agent's traceback when the exit barrier times out.
- **The stop save.** On SIGTERM the agent passes the signal to its trainers and kills them 30 s later
  (hard-coded where it closes them); a final save of a 5 GB checkpoint on a slow disk takes longer. Here the
  trainers get S seconds (modes.STOP_WAIT_S, under compose.yaml's stop_grace_period).

tests/integration/test_launcher.py checks each of these against the pinned torch and Accelerate (a torch whose
`launch_agent` builds its agent another way fails there, not silently in production).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from entrypoint.modes import EXIT_WAIT_OPTION, STOP_WAIT_OPTION

# torch.distributed.elastic.agent.server.api logs this with the exception when the exit barrier times out.
_BARRIER_ERROR_PREFIX = "Error waiting on exit barrier"
_AGENT_LOGGER = "torch.distributed.elastic.agent.server.api"


def bound_exit_barrier(seconds: float, stop_wait_s: float = 30.0) -> None:
    """Make the agent that torch's `launch_agent` builds (looked up in its module when it runs) wait at most
    `seconds` in its exit barrier, and give its trainers `stop_wait_s` after a stop signal before it kills
    them (torch: 30 s). Once per process."""
    from torch.distributed.launcher import api

    class BoundedExitAgent(api.LocalElasticAgent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["exit_barrier_timeout"] = seconds
            super().__init__(*args, **kwargs)

        def _shutdown(self, *args: Any, **kwargs: Any) -> None:
            # The agent closes its trainers with close(death_sig), whose timeout defaults to 30 s.
            context = getattr(self, "_pcontext", None)
            if context is not None and not isinstance(context.close, functools.partial):
                context.close = functools.partial(context.close, timeout=stop_wait_s)
            super()._shutdown(*args, **kwargs)

    api.LocalElasticAgent = BoundedExitAgent
    logging.getLogger(_AGENT_LOGGER).addFilter(_BarrierTimeoutLine(seconds))


class _BarrierTimeoutLine(logging.Filter):
    """The agent's 'Error waiting on exit barrier' record, traceback and all, becomes one line."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_BARRIER_ERROR_PREFIX):
            record.msg = exit_wait_line(self.seconds)
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def exit_wait_line(seconds: float) -> str:
    return (
        f"this machine's trainer has ended; the launchers of the other machines did not all end within "
        f"{seconds:g} s (one was stopped or failed): not waiting for them any longer"
    )


def failure_code(exitcode: int) -> int:
    """A trainer's exit status as the launcher's exit code: a signal N is 128+N, as a shell reports it."""
    if exitcode < 0:
        return 128 - exitcode
    return exitcode or 1


def failure_line(rank: int, exitcode: int, code: int) -> str:
    if exitcode >= 0:
        how, why = f"exited with code {exitcode}", "its own error line above says why"
    else:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
        if -exitcode == signal.SIGABRT:
            # TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (entrypoint.machines): NCCL's watchdog takes the process down
            # when a collective times out, before Python could say which machine is lost.
            why = (
                "NCCL ends a process this way when a collective times out: another machine may have stopped "
                "answering within COLLECTIVE_TIMEOUT_S"
            )
        else:
            why = "a signal from outside, or the out-of-memory killer (see dmesg)"
    return (
        f"error: the trainer process of global rank {rank} {how}; every process of this machine has stopped "
        f"(exit {code}; {why})"
    )


def _parse(argv: Sequence[str]) -> tuple[float, float, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoint.train.launcher", add_help=False, allow_abbrev=False
    )
    parser.add_argument(EXIT_WAIT_OPTION, dest="exit_wait_s", type=float, required=True)
    parser.add_argument(STOP_WAIT_OPTION, dest="stop_wait_s", type=float, default=30.0)
    ours, rest = parser.parse_known_args(list(argv))
    if ours.exit_wait_s <= 0 or ours.stop_wait_s <= 0:
        parser.error(f"{EXIT_WAIT_OPTION} and {STOP_WAIT_OPTION} must be above 0")
    return ours.exit_wait_s, ours.stop_wait_s, rest


def main(argv: Sequence[str] | None = None) -> int:
    exit_wait_s, stop_wait_s, rest = _parse(sys.argv[1:] if argv is None else argv)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    bound_exit_barrier(exit_wait_s, stop_wait_s)
    arguments = launch_command_parser().parse_args(rest)
    try:
        launch_command(arguments)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        code = failure_code(failure.exitcode)
        print(failure_line(rank, failure.exitcode, code), file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
