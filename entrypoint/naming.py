"""File names with a meaning: numbered checkpoints, unfinished temp files, quarantined files.

The trainer, the preflight and F5-TTS's own selection rule all depend on these, so they live in one place.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

LAST_NAME = "model_last.pt"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
LOADABLE_ENDINGS = (".pt", ".safetensors")  # the only endings F5-TTS's trainer loads (and picks a loader by)
QUARANTINE_SUFFIX = ".corrupted"
SUPERSEDED_SUFFIX = ".superseded"  # a valid but older file moved aside for a newer complete save
REASON_SUFFIX = ".json"  # next to a quarantined file: <name>.corrupted.json
PRETRAINED_PREFIX = "pretrained_"
LOG_FILE_NAME = "training.log"
REPORT_DIR_NAME = "preflight"  # inside OUTPUT_DIR: report.json, report.txt, verdict-cache.json
LOCK_NAME = ".train.lock"

_NUMBERED = re.compile(r"^model_(\d+)\.(pt|safetensors)$")
# An unfinished save: ".<final name>.partial-<pid>-<token>". The leading dot and the suffix keep it out of
# F5-TTS's own selection (which wants names starting with "model_" and ending in .pt/.safetensors).
# The PID may be any run of digits (a name can be made by anyone): whether it fits a pid_t is checked when
# it is used.
_TEMP = re.compile(r"^\.(?P<final>.+)\.partial-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")


def numbered_update(name: str) -> int | None:
    """The update number of `model_<N>.pt` / `model_<N>.safetensors`, else None."""
    if not name.startswith("model_"):  # most names of a folder: no regex needed
        return None
    match = _NUMBERED.match(name)
    return int(match.group(1)) if match else None


def temp_path_for(final: Path) -> Path:
    """A unique temp name in the same folder as `final` (same file system, so a rename is atomic)."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


def temp_target(name: str) -> str | None:
    """For an unfinished-save temp file name, the final name it was meant to become; else None."""
    if ".partial-" not in name:  # most names of a folder: no regex needed
        return None
    match = _TEMP.match(name)
    return match.group("final") if match else None


def temp_pid(name: str) -> int | None:
    """For an unfinished-save temp file name, the PID of the process that wrote it; else None."""
    match = _TEMP.match(name)
    return int(match.group("pid")) if match else None


def machine_suffix(machine_rank: int) -> str:
    """Empty on machine 0, "-machine-N" on machine N of several. Every file a machine other than 0 writes for
    itself carries it, so several machines may share one OUTPUT_DIR (or LOGS_DIR) without touching each
    other's lock, reports, run ledger or log."""
    return "" if machine_rank == 0 else f"-machine-{machine_rank}"


def state_dir(output_dir: Path, machine_rank: int) -> Path:
    """This machine's preflight folder: OUTPUT_DIR/preflight, or OUTPUT_DIR/preflight/machine-N."""
    base = output_dir / REPORT_DIR_NAME
    return base if machine_rank == 0 else base / f"machine-{machine_rank}"


def lock_name(machine_rank: int) -> str:
    return f".train{machine_suffix(machine_rank)}.lock"


def log_file_name(machine_rank: int) -> str:
    return f"training{machine_suffix(machine_rank)}.log"


def is_checkpoint_name(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES)
