"""The report: human text (one line per check plus a summary) and the same as JSON.

JSON fields are documented in the README and kept stable: version, status, cpu, checks, checkpoint,
quarantined, trainer. Every string passes the redactor, so no secret reaches a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from entrypoint import __version__
from entrypoint.checks.result import FAIL, WARN
from entrypoint.durable import replace_text
from entrypoint.preflight import PreflightResult
from entrypoint.redact import Redactor


def build_report(result: PreflightResult) -> dict[str, Any]:
    outcome = result.checkpoint
    chosen = outcome.load_path
    return {
        "version": __version__,
        "mode": result.mode,
        "status": result.status,
        "cpu": {
            "usable": result.cpu.usable,
            "usable_exact": result.cpu.usable_exact,
            "source": result.cpu.source,
            "workers": result.cpu.workers,
            "requested_workers": result.cpu.requested_workers,
            "threads": result.cpu.threads,
            "processes": result.processes,
        },
        "gpu": {
            "count": result.gpu.count,
            "devices": [
                {"index": d.index, "name": d.name, "memory_mib": d.memory_mib} for d in result.gpu.devices
            ],
            "driver_version": result.gpu.driver_version,
            "cuda_version": result.gpu.cuda_version,
        },
        "checks": [check.to_json() for check in result.checks],
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
        "trainer": {"argv": list(result.argv)},
        "notes": list(result.notes),
        "readiness": result.readiness,
    }


def redact_tree(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_tree(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: redact_tree(item, redact) for key, item in value.items()}
    return value


def render_text(report: dict[str, Any]) -> str:
    lines = [f"F5-TTS preflight {report['version']} ({report['mode']})"]
    width = max((len(check["name"]) for check in report["checks"]), default=10)
    for check in report["checks"]:
        lines.append(f"  {check['status'].upper():<4}  {check['name']:<{width}}  {check['message']}")
        if check["fix"] and check["status"] in (WARN, FAIL):
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {check['fix']}")
    for item in report["quarantined"]:
        if item["moved_to"]:
            verb = "moved aside (valid, older)" if item["superseded"] else "quarantined"
            lines.append(f"  {verb} {item['path']} -> {item['moved_to']}: {item['cause']}")
        else:
            dry = "would move aside (valid, older)" if item["superseded"] else "would quarantine"
            lines.append(
                f"  {dry if item['error'] == 'dry run' else 'NOT quarantined'} "
                f"{item['path']}: {item['cause']}"
                + (f" ({item['error']})" if item["error"] and item["error"] != "dry run" else "")
            )
    for problem in report["checkpoint"]["problems"]:
        lines.append(f"  checkpoint: {problem}")
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    checkpoint = report["checkpoint"]
    if checkpoint["chosen"]:
        update = "" if checkpoint["update"] is None else f" at update {checkpoint['update']}"
        lines.append(f"  load: {checkpoint['chosen']} ({checkpoint['kind']}{update})")
    else:
        lines.append(f"  load: nothing ({checkpoint['kind']})")
    lines.append("  trainer: " + " ".join(report["trainer"]["argv"]))
    fails = sum(check["status"] == FAIL for check in report["checks"])
    warns = sum(check["status"] == WARN for check in report["checks"])
    verdict = {"ok": "ready", "warn": "ready, with warnings", "fail": "NOT ready: training would fail"}
    lines.append(
        f"summary: {report['status'].upper()}: {verdict[report['status']]} "
        f"({fails} failed, {warns} warning(s), {len(report['checks'])} checks)"
    )
    return "\n".join(lines)


def write_report(folder: Path, report: dict[str, Any], text: str) -> str | None:
    """Write report.json and report.txt into `folder`; the reason when that was not possible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        replace_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
        replace_text(folder / "report.txt", text + "\n")
    except OSError as error:
        return f"report not written to {folder}: {error.strerror or error}"
    return None
