"""`preflight run`: plan, perform the plan's actions in order, record them, then exec the trainer.

The report is written after the actions, whatever happened to them, and says which were not done; it is not
written when the lock is held by another trainer (that run's report stays as it is).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys

from entrypoint import actions as act
from entrypoint import ledger
from entrypoint.actions import ActionResult, Performed, perform
from entrypoint.checkpoints.resolve import CheckpointOutcome, failed_after_actions, settle
from entrypoint.checks.guards import GPU_GONE
from entrypoint.checks.result import FAIL, CheckResult
from entrypoint.cluster import meet_before_training
from entrypoint.commands.common import add_env_options, make_plan, redactor_for
from entrypoint.errors import EXIT_CHECK_FAILED, EXIT_GPU_GONE, EXIT_OK, PreflightError
from entrypoint.handoff import handoff_path, write_handoff
from entrypoint.launch import exec_trainer
from entrypoint.logfile import TEE_MARKER, tee_descriptors, tee_output
from entrypoint.plan import LOCK_FIX, Plan
from entrypoint.report import build_report, redact_tree, render_text, terminal_width, write_report
from entrypoint.settings import Settings, load_settings

HELP = "check, perform the planned actions (quarantine, install), then exec the trainer [-- CMD ...]"
EXAMPLE = "example: preflight run --env-file .env    (or: preflight run -- python my_trainer.py)"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run", help=HELP, description=HELP + " (the default command)", epilog=EXAMPLE
    )
    add_env_options(parser)
    parser.add_argument(
        "--force", action="store_true", help="start even when the crash-loop breaker would refuse (once)"
    )
    return parser


def run(args: argparse.Namespace, command: list[str] | None = None) -> int:
    loaded = load_settings(cli_env_file=args.env_file)
    settings = loaded.settings
    redact = redactor_for(loaded)
    tee_output(settings.log_dir, redact, settings.log_file.name)
    plan = make_plan(loaded, command=command, wait=True, force=getattr(args, "force", False))
    performed = perform(plan.actions, quarantine_dir=settings.quarantine_dir) if plan.handoff else None
    outcome = settle(plan.checkpoint, performed.results if performed else None, settings)
    extra = _after_actions(plan, performed, outcome.load_path if outcome.kind != "none" else None)
    if any(check.status == FAIL for check in extra):
        outcome = failed_after_actions(outcome, extra[0].message, extra[0].fix)
        extra = [check for check in extra if check.name != "checkpoint"]
    if performed is not None and plan.checkpoint.cache is not None:
        warning = plan.checkpoint.cache.save()
        if warning:
            outcome = dataclasses.replace(outcome, problems=(*outcome.problems, warning))
    report = redact_tree(build_report(plan, outcome, "run", performed, extra), redact)
    note = ""
    if not _lock_refused(plan, performed):
        problem = write_report(plan.report_dir, report, render_text(report))
        note = f"\n  note: {problem}" if problem else ""
    if args.json:
        print(json.dumps(report, indent=2))
        print(render_text(report, terminal_width(sys.stderr)) + note, file=sys.stderr)
    else:
        print(render_text(report, terminal_width(sys.stdout)) + note)
    if report["status"] == "fail" or plan.handoff is None:
        gone = any(check.name == GPU_GONE and check.status == FAIL for check in plan.checks)
        return EXIT_GPU_GONE if gone else EXIT_CHECK_FAILED
    _meet_or_record(settings, plan, outcome)
    path = handoff_path(plan.report_dir)
    write_handoff(path, plan.handoff)
    env = {**plan.env, **plan.handoff.environment(path)}
    lock = (performed.lock_fd,) if performed is not None and performed.lock_fd is not None else ()
    if tee_descriptors(settings.log_dir, redact, not_for_copier=lock, name=settings.log_file.name):
        env[TEE_MARKER] = "1"
    exec_trainer(plan.argv, env)
    return EXIT_OK


def _meet_or_record(settings: Settings, plan: Plan, outcome: CheckpointOutcome) -> None:
    """Meet the other machines; when they do not meet, this start's ledger record says no trainer ran, so
    a machine waiting for a late peer is never taken for a crash loop."""
    assert plan.handoff is not None
    try:
        meet_before_training(settings, plan.handoff.processes, plan.handoff.mixed_precision, outcome)
    except PreflightError as error:
        with contextlib.suppress(OSError):
            ledger.record_end(
                ledger.ledger_path(plan.report_dir),
                exit_code=error.exit_code,
                outcome=ledger.NOT_STARTED,
                detail=error.message,
            )
        raise


def _lock_refused(plan: Plan, performed: Performed | None) -> bool:
    """Another trainer holds OUTPUT_DIR: its report must not be overwritten by this refused run."""
    if performed is None:
        return any(check.name == "lock" and check.status == FAIL for check in plan.checks)
    return any(r.action.kind == act.LOCK and not r.done for r in performed.results)


def _after_actions(plan: Plan, performed: Performed | None, load_path: str | None) -> list[CheckResult]:
    if performed is None:
        return []
    failed = performed.failed_required
    if failed is not None:
        return [
            CheckResult("actions", FAIL, _failed_message(failed), _FIX.get(failed.action.kind, _FIX_DEFAULT))
        ]
    verified = plan.mode.verify(plan.settings, load_path)
    return [verified] if verified is not None else []


def _failed_message(result: ActionResult) -> str:
    if result.action.kind == act.LOCK:
        return result.error
    return f"could not {result.action.describe()} ({result.error}); the actions after it were not done"


_FIX_DEFAULT = "make OUTPUT_DIR writable (with room for one checkpoint), or use TRAINER_MODE=safe"
_FIX = {
    act.LOCK: LOCK_FIX,
    act.CREATE_FOLDER: "mount the folder read-write for this user, or point the setting at a writable folder",
    act.OWN_COPY: "free space in OUTPUT_DIR or use TRAINER_MODE=safe",
    act.LINK_FOLDER: "run as a user who may write next to the installed f5_tts package, or use TRAINER_MODE=safe",
}
