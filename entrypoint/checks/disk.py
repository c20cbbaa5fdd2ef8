"""Free space where checkpoints are written against what the next saves need.

A save writes a temp file while the previous checkpoint still exists, so one more save needs one checkpoint
of free space; a hard-linked backup on the same file system needs none, a copy on another one needs one there.
"""

from __future__ import annotations

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, human_bytes
from entrypoint.probes.storage import SpaceFacts

SAVES_AHEAD_FOR_OK = 3  # the last save, a numbered save and a backup without a warning


def check_disk(
    output: SpaceFacts, backup: SpaceFacts | None, *, checkpoint_bytes: int, estimate_source: str
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
        saves = facts.free_bytes // checkpoint_bytes if checkpoint_bytes else SAVES_AHEAD_FOR_OK
        where = f"{free} free in {facts.existing}, one checkpoint ~{size} ({estimate_source})"
        if checkpoint_bytes and saves < 1:
            results.append(CheckResult(label, FAIL, f"{where}: not even one more save fits", fix))
        elif saves < SAVES_AHEAD_FOR_OK:
            results.append(CheckResult(label, WARN, f"{where}: only {saves} more save(s) fit", fix))
        else:
            results.append(CheckResult(label, OK, f"{where}: room for {saves} saves"))
    return results
