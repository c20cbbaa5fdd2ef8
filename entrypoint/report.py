"""The report: human text (one line per check plus a summary) and the same as JSON.

JSON fields are documented in the README and kept stable: version, status, cpu, checks, checkpoint,
quarantined, trainer. Every string passes the redactor, so no secret reaches a report.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from entrypoint import __version__
from entrypoint.actions import Performed
from entrypoint.checkpoints.resolve import CheckpointOutcome
from entrypoint.checks.result import FAIL, WARN, CheckResult, worst
from entrypoint.durable import replace_text
from entrypoint.plan import Plan
from entrypoint.redact import Redactor

# Which probe's cost belongs to which check (several checks share one probe).
_PROBE_OF_CHECK = {
    "init": "ulimits",
    "audio": "readiness",
    "vocabulary": "readiness",
    "text": "readiness",
    "batches": "readiness",
    "fingerprint": "readiness",
}


def build_report(
    plan: Plan,
    outcome: CheckpointOutcome,
    mode: str,
    performed: Performed | None = None,
    extra_checks: list[CheckResult] | None = None,
) -> dict[str, Any]:
    """The report of `check` (performed None: the actions are what `run` would do) or of `run`."""
    checks = [*plan.checks, *(extra_checks or [])]
    checks = [
        CheckResult("checkpoint", outcome.status, outcome.message, outcome.fix)
        if c.name == "checkpoint"
        else c
        for c in checks
    ]
    chosen = outcome.load_path
    if performed is None:
        actions = [action.to_json() for action in plan.actions]
    else:
        actions = [result.to_json() for result in performed.results]
    return {
        "version": __version__,
        "mode": mode,
        "status": worst(check.status for check in checks),
        "cpu": {
            "usable": plan.cpu.usable,
            "usable_exact": plan.cpu.usable_exact,
            "source": plan.cpu.source,
            "workers": plan.workers,
            "requested_workers": plan.cpu.requested_workers,
            "threads": plan.cpu.threads,
            "processes": plan.cpu.processes,
        },
        "gpu": {
            "count": plan.facts.gpu.count,
            "devices": [
                {"index": d.index, "name": d.name, "memory_mib": d.memory_mib} for d in plan.facts.gpu.devices
            ],
            "driver_version": plan.facts.gpu.driver_version,
            "cuda_version": plan.facts.gpu.cuda_version,
        },
        "checks": [{**check.to_json(), "ms": _cost(plan.cost_ms, check.name)} for check in checks],
        "actions": actions,
        "checkpoint": {
            "chosen": chosen,
            "update": outcome.update,
            "kind": outcome.kind,
            "source": outcome.source,
            "levels": list(outcome.chosen.levels) if outcome.chosen else [],
            "problems": list(outcome.problems),
        },
        "quarantined": [
            {
                "path": item.path,
                "moved_to": item.moved_to,
                "cause": item.cause,
                "error": item.error,
                "superseded": item.superseded,
            }
            for item in outcome.quarantined
        ],
        "trainer": {"argv": list(plan.argv)},
        "notes": [],
        "readiness": plan.facts.readiness_data,
    }


def _cost(cost_ms: dict[str, float], check: str) -> float | None:
    value = cost_ms.get(_PROBE_OF_CHECK.get(check, check))
    return None if value is None else round(value, 1)


def redact_tree(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_tree(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: redact_tree(item, redact) for key, item in value.items()}
    return value


TERMINAL_WIDTH = 100
_ORDER = {FAIL: 0, WARN: 1}


def _wrapped(text: str, first: str, rest: str, width: int | None) -> list[str]:
    """`text` in lines of at most `width` columns (a path longer than that stays whole); None: one line."""
    if width is None:
        return [first + text]
    return textwrap.wrap(
        text,
        width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def render_text(report: dict[str, Any], width: int | None = None) -> str:
    """The report as text: failures first, then warnings, then the rest; the last line is the one next step.

    `width` wraps it for a terminal (TERMINAL_WIDTH when the output is one); None keeps each item on one line,
    as the log file wants it for grep.
    """
    lines = [f"F5-TTS preflight {report['version']} ({report['mode']})"]
    name_width = max((len(check["name"]) for check in report["checks"]), default=10)
    indent = " " * (name_width + 10)
    for check in sorted(report["checks"], key=lambda c: _ORDER.get(c["status"], 2)):
        head = f"  {check['status'].upper():<4}  {check['name']:<{name_width}}  "
        lines += _wrapped(check["message"], head, indent, width)
        if check["fix"] and check["status"] in (WARN, FAIL):
            lines += _wrapped(f"fix: {check['fix']}", indent, indent + "     ", width)
    for item in report["quarantined"]:
        if item["moved_to"]:
            verb = "moved aside (valid, older)" if item["superseded"] else "quarantined"
            text = f"{verb} {item['path']} -> {item['moved_to']}: {item['cause']}"
        else:
            dry = "would move aside (valid, older)" if item["superseded"] else "would quarantine"
            text = (
                f"{dry if item['error'] == 'dry run' else 'NOT quarantined'} {item['path']}: {item['cause']}"
            )
            text += f" ({item['error']})" if item["error"] and item["error"] != "dry run" else ""
        lines += _wrapped(text, "  ", "    ", width)
    for problem in report["checkpoint"]["problems"]:
        lines += _wrapped(f"checkpoint: {problem}", "  ", "    ", width)
    for note in report["notes"]:
        lines += _wrapped(f"note: {note}", "  ", "    ", width)
    for action in report["actions"]:
        if action["what"] in ("quarantine", "move-aside"):
            continue  # listed above, with their causes
        line = _describe_action(action)
        if "done" not in action:
            text = f"will: {line}"
        elif action["done"]:
            text = f"done: {line}"
        else:
            text = f"NOT done: {line} ({action['error']})"
        lines += _wrapped(text, "  ", "    ", width)
    checkpoint = report["checkpoint"]
    if checkpoint["chosen"]:
        update = "" if checkpoint["update"] is None else f" at update {checkpoint['update']}"
        lines += _wrapped(f"load: {checkpoint['chosen']} ({checkpoint['kind']}{update})", "  ", "    ", width)
    else:
        lines.append(f"  load: nothing ({checkpoint['kind']})")
    lines += _wrapped("trainer: " + " ".join(report["trainer"]["argv"]), "  ", "    ", width)
    fails = sum(check["status"] == FAIL for check in report["checks"])
    warns = sum(check["status"] == WARN for check in report["checks"])
    verdict = {"ok": "ready", "warn": "ready, with warnings", "fail": "NOT ready: training would fail"}
    lines.append(
        f"summary: {report['status'].upper()}: {verdict[report['status']]} "
        f"({fails} failed, {warns} warning(s), {len(report['checks'])} checks)"
    )
    lines += _wrapped(f"next: {next_step(report)}", "", "      ", width)
    return "\n".join(lines)


def next_step(report: dict[str, Any]) -> str:
    """The one thing to do now: fix the first failure, or start (follow) the training."""
    failed = [check for check in report["checks"] if check["status"] == FAIL]
    if failed:
        first = failed[0]
        return f"{first['name']}: {first['fix'] or first['message']}"
    if report["mode"] == "check":
        return "start training: `docker compose up train` (or `preflight run` here)"
    return "training starts now; follow it with `make logs` (or tail -f LOG_DIR/training.log)"


def _describe_action(action: dict[str, Any]) -> str:
    text = f"{action['what']} {action['path']}"
    target = action.get("landed") or action.get("target")
    if target and target != action["path"]:
        text += f" -> {target}"
    return text + (f": {action['cause']}" if action["cause"] else "")


def write_report(folder: Path, report: dict[str, Any], text: str) -> str | None:
    """Write report.json and report.txt into `folder`; the reason when that was not possible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        replace_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
        replace_text(folder / "report.txt", text + "\n")
    except OSError as error:
        return f"report not written to {folder}: {error.strerror or error}"
    return None


def terminal_width(stream: Any) -> int | None:
    """TERMINAL_WIDTH for an interactive terminal, None for a pipe or a file (one line per item for grep)."""
    try:
        return TERMINAL_WIDTH if stream.isatty() else None
    except (AttributeError, ValueError):
        return None
