"""`preflight status`: where a run stands, read from OUTPUT_DIR only (torch-free, changes nothing).

The run ledger (every start and how it ended), the newest valid checkpoint, the trainer's last heartbeat
(its age, phase and updates/s), the ETA to MAX_UPDATES, and the disk space left.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from entrypoint.errors import EXIT_OK
from entrypoint.ledger import ledger_path, read_ledger, to_json
from entrypoint.settings import load_settings

HELP = "show the run ledger, the newest valid checkpoint, the last heartbeat, ETA and disk left"
EXAMPLE = "example: preflight status --env-file .env    (--json for a script)"
_SHOWN_RUNS = 10


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("status", help=HELP, description=HELP, epilog=EXAMPLE)
    parser.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    return parser


def newest_valid_checkpoint(output_dir: Path) -> dict[str, Any] | None:
    """The valid checkpoint with the highest update among model_last.pt and model_<N>.pt (structure check)."""
    from entrypoint.checkpoints.validate import validate_file
    from entrypoint.naming import LAST_NAME, numbered_update

    try:
        names = [
            entry.name
            for entry in output_dir.iterdir()
            if entry.name == LAST_NAME
            or (entry.name.endswith(".pt") and numbered_update(entry.name) is not None)
        ]
    except OSError:
        return None
    best: dict[str, Any] | None = None
    for name in names:
        verdict = validate_file(output_dir / name)
        if verdict.valid and verdict.update is not None and (best is None or verdict.update > best["update"]):
            best = {"path": str(output_dir / name), "update": verdict.update, "bytes": verdict.size}
    return best


def read_heartbeat(report_dir: Path, now: float) -> dict[str, Any] | None:
    from entrypoint.train.watchdog import HEARTBEAT_FILE

    try:
        data = json.loads((report_dir / HEARTBEAT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    last = data.get("last_update_time")
    data["age_s"] = round(now - last, 1) if isinstance(last, int | float) else None
    rate, max_updates, update = data.get("updates_per_s"), data.get("max_updates"), data.get("update")
    data["eta_s"] = None
    if isinstance(rate, int | float) and rate > 0 and max_updates and isinstance(update, int):
        data["eta_s"] = round(max(0, max_updates - update) / rate)
    return data


def gather_status(settings: Any, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    report_dir = settings.state_dir
    runs = read_ledger(ledger_path(report_dir))
    try:
        free = shutil.disk_usage(settings.output_dir).free
    except OSError:
        free = None
    return {
        "output_dir": str(settings.output_dir),
        "runs": [to_json(run) for run in runs[-_SHOWN_RUNS:]],
        "newest_valid_checkpoint": newest_valid_checkpoint(settings.output_dir),
        "heartbeat": read_heartbeat(report_dir, now),
        "max_updates": settings.max_updates,
        "disk_free_bytes": free,
    }


def render(status: dict[str, Any]) -> str:
    lines = [f"status of {status['output_dir']}"]
    newest = status["newest_valid_checkpoint"]
    lines.append(
        f"  newest valid checkpoint: {newest['path']} (update {newest['update']})"
        if newest
        else "  newest valid checkpoint: none"
    )
    beat = status["heartbeat"]
    if beat is None:
        lines.append("  heartbeat: none (the built-in trainer has not run here yet)")
    else:
        age = beat.get("age_s")
        rate = beat.get("updates_per_s")
        text = f"  heartbeat: update {beat.get('update')}, phase {beat.get('phase')}"
        text += f", last update {age:.0f} s ago" if age is not None else ", no update yet"
        if rate:
            text += f", {rate:.2f} updates/s"
        if beat.get("eta_s") is not None:
            text += f", ETA to MAX_UPDATES={status['max_updates']}: {_duration(beat['eta_s'])}"
        lines.append(text)
    free = status["disk_free_bytes"]
    lines.append(
        f"  disk left in OUTPUT_DIR: {free / 1e9:.1f} GB" if free is not None else "  disk left: unknown"
    )
    runs = status["runs"]
    lines.append(f"  runs (the last {len(runs)}, oldest first):" if runs else "  runs: none recorded")
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started"]))
        if run["ended"] is None:
            end = "running, or ended without a record (killed)"
        else:
            end = f"exit {run['exit_code']} {run['outcome']}" + (
                f": {run['detail']}" if run["detail"] else ""
            )
            if run["last_saved_update"] is not None:
                end += f", saved update {run['last_saved_update']}"
        lines.append(f"    {started} resumed from update {run['resumed_from']}: {end}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def run(args: argparse.Namespace) -> int:
    settings = load_settings(cli_env_file=args.env_file).settings
    status = gather_status(settings)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return EXIT_OK
