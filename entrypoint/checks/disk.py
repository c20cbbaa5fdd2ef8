"""Free space where checkpoints are written against what the next saves need.

A save writes a temp file while the previous checkpoint still exists, so one more save needs one checkpoint
of free space; a hard-linked backup on the same file system needs none, a copy on another one needs one there.
"""

from __future__ import annotations

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, human_bytes
from entrypoint.probes.storage import SpaceFacts

MIN_SAVES_AHEAD = 3  # a model_last.pt temp, a numbered temp and a backup copy can exist at once


def saves_needed(keep_checkpoints: int, backup_keep: int, backups_share_disk: bool) -> int:
    """Checkpoints' worth of space a run needs at its peak: the kept numbered ones plus the temp files of
    a "last" and a numbered save written at the same update, plus backup copies when they share the disk."""
    kept = max(keep_checkpoints, 0)
    return kept + MIN_SAVES_AHEAD + (backup_keep if backups_share_disk else 0)


def check_disk(
    output: SpaceFacts,
    backup: SpaceFacts | None,
    *,
    checkpoint_bytes: int,
    estimate_source: str,
    saves_wanted: int = MIN_SAVES_AHEAD,
) -> list[CheckResult]:
    results = []
    size = human_bytes(checkpoint_bytes)
    fix = "free space or point OUTPUT_DIR/BACKUP_DIR at a larger disk (lower KEEP_CHECKPOINTS / BACKUP_KEEP)"
    for label, facts in (("disk-output", output), ("disk-backup", backup)):
        if facts is None:
            continue
        if label == "disk-backup" and facts.device == output.device:
            results.append(
                CheckResult(
                    label,
                    OK,
                    "backups share the output file system: hard links where the mounts allow "
                    "(two bind mounts of one disk need copies, counted in disk-output)",
                )
            )
            continue
        free = human_bytes(facts.free_bytes)
        wanted = saves_wanted if label == "disk-output" else MIN_SAVES_AHEAD
        saves = facts.free_bytes // checkpoint_bytes if checkpoint_bytes else wanted
        where = f"{free} free in {facts.existing}, one checkpoint ~{size} ({estimate_source})"
        if checkpoint_bytes and saves < 1:
            results.append(CheckResult(label, FAIL, f"{where}: not even one more save fits", fix))
        elif saves < wanted:
            results.append(
                CheckResult(
                    label,
                    WARN,
                    f"{where}: only {saves} more save(s) fit, the run needs room for {wanted} at its peak "
                    "(saves that do not fit are skipped, training goes on)",
                    fix,
                )
            )
        else:
            results.append(CheckResult(label, OK, f"{where}: room for {saves} saves"))
    return results
