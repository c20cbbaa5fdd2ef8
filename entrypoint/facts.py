"""Everything the plan needs to know about this machine and these folders, gathered by the probes. Reads only.

The probes are timed one by one: `preflight check --json` shows what each check cost, so a slow one is
visible. `wait=True` (`preflight run`) first gives a late mount or a file still being copied a bounded time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from entrypoint import run_lock
from entrypoint.checks.dataset import check_dataset
from entrypoint.checks.result import FAIL, WARN, CheckResult
from entrypoint.checks.writable import FolderFacts, probe_folder
from entrypoint.launch import trainer_problem
from entrypoint.ledger import RunRecord, ledger_path, log_tail, read_ledger
from entrypoint.presets import PRESETS
from entrypoint.probes.cpu import CpuFacts, probe_cpu
from entrypoint.probes.gpu import GpuFacts, probe_gpu
from entrypoint.probes.storage import (
    LimitFacts,
    ShmFacts,
    SpaceFacts,
    largest_checkpoint_bytes,
    probe_limits,
    probe_shm,
    probe_space,
)
from entrypoint.readiness import readiness_checks
from entrypoint.settings import LoadedSettings, Settings
from entrypoint.wait import wait_for_path, wait_until_stable

T = TypeVar("T")
FOLDER_LABELS = {"OUTPUT_DIR": "output", "BACKUP_DIR": "backup", "LOG_DIR": "log"}


@dataclass(frozen=True)
class Facts:
    gpu: GpuFacts
    cpu: CpuFacts
    shm: ShmFacts
    limits: LimitFacts
    folders: dict[str, FolderFacts]  # by variable: OUTPUT_DIR, BACKUP_DIR (when backups are on), LOG_DIR
    output_space: SpaceFacts
    backup_space: SpaceFacts | None
    checkpoint_bytes: int  # one checkpoint, for the disk check
    checkpoint_bytes_source: str
    dataset: CheckResult
    vocab_size: int | None
    readiness: tuple[CheckResult, ...]  # dataset text, vocabulary coverage, batch plan (entrypoint/readiness)
    readiness_data: dict[str, Any]  # the batch plan, missing characters, audio facts: `check --json`
    processes: int  # training processes: TRAIN_PROCESSES, else one per visible GPU
    argv: list[str]  # the command after `--`, TRAINER_COMMAND split like a shell, or the mode's trainer
    builtin: bool  # argv is the built-in trainer of TRAINER_MODE
    trainer_problem: str | None  # why argv[0] could not be exec'd, found before anything changes
    f5_tts_installed: bool
    lock_holder: str | None  # another trainer using OUTPUT_DIR
    waits: tuple[CheckResult, ...] = ()  # what `run` waited for in vain
    runs: tuple[RunRecord, ...] = ()  # the run ledger, oldest first
    log_size: int = 0  # training.log's size now: the next start's lines follow
    failed_runs_log: tuple[str, ...] = ()  # training.log's last lines since the start CRASH_LOOP_LIMIT ago
    superseded: tuple[tuple[str, int], ...] = ()  # (path, bytes) of older copies moved aside (*.superseded)
    cost_ms: dict[str, float] = field(default_factory=dict)  # probe name -> milliseconds


class _Timer:
    def __init__(self) -> None:
        self.cost_ms: dict[str, float] = {}

    def __call__(self, name: str, probe: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return probe()
        finally:
            self.cost_ms[name] = self.cost_ms.get(name, 0.0) + (time.perf_counter() - start) * 1000


def gather_facts(
    loaded: LoadedSettings,
    environ: Mapping[str, str],
    *,
    command: list[str] | None = None,
    wait: bool = False,
) -> Facts:
    from entrypoint.modes import mode_for

    settings = loaded.settings
    timed = _Timer()
    waits = tuple(timed("wait", lambda: _wait_for_inputs(settings))) if wait else ()
    gpu = timed("gpu", lambda: probe_gpu(environ))
    folders = {
        "OUTPUT_DIR": settings.output_dir,
        **({"BACKUP_DIR": settings.backup_dir} if settings.backup_every_updates else {}),
        "LOG_DIR": settings.log_dir,
    }
    size, source = timed("disk-output", lambda: _checkpoint_size(settings))
    dataset, vocab_size = timed("dataset", lambda: check_dataset(settings.dataset_dir, settings.vocab_path))
    processes = settings.train_processes or max(1, gpu.count)
    if command:
        argv = list(command)
    elif settings.trainer_command:
        argv = shlex.split(settings.trainer_command)
    else:
        argv = mode_for(settings).argv(settings, processes)  # a bad combination is a ConfigError (exit 2)
    problem = timed("trainer", lambda: trainer_problem(argv, environ))
    readiness, readiness_data = timed(
        "readiness", lambda: readiness_checks(settings, settings.vocab_path, processes)
    )
    runs, log_size, failed_log = timed("ledger", lambda: _ledger_facts(settings))
    superseded = timed("disk-superseded", lambda: _superseded_copies(settings))
    return Facts(
        gpu=gpu,
        cpu=timed("cpu", probe_cpu),
        shm=timed("shm", probe_shm),
        limits=timed("ulimits", probe_limits),
        folders={
            name: timed(f"writable-{FOLDER_LABELS[name]}", lambda p=path: probe_folder(p))
            for name, path in folders.items()
        },
        output_space=timed("disk-output", lambda: probe_space(settings.output_dir)),
        backup_space=timed("disk-backup", lambda: probe_space(settings.backup_dir))
        if settings.backup_every_updates
        else None,
        checkpoint_bytes=size,
        checkpoint_bytes_source=source,
        dataset=dataset,
        vocab_size=vocab_size,
        readiness=tuple(readiness),
        readiness_data=readiness_data,
        processes=processes,
        argv=argv,
        builtin=not command and not settings.trainer_command,
        trainer_problem=problem,
        f5_tts_installed=timed("trainer", lambda: importlib.util.find_spec("f5_tts") is not None),
        lock_holder=timed("lock", lambda: run_lock.held_by_other(settings.output_dir, settings.lock_name)),
        waits=waits,
        runs=runs,
        log_size=log_size,
        failed_runs_log=failed_log,
        superseded=superseded,
        cost_ms=timed.cost_ms,
    )


_SUPERSEDED = re.compile(r".+\.superseded(\.\d+)?$")


def _superseded_copies(settings: Settings) -> tuple[tuple[str, int], ...]:
    found = []
    for folder in dict.fromkeys(f for f in (settings.output_dir, settings.quarantine_dir) if f):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if _SUPERSEDED.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    found.append((entry.path, entry.stat(follow_symlinks=False).st_size))
    return tuple(sorted(found))


def _ledger_facts(settings: Settings) -> tuple[tuple[RunRecord, ...], int, tuple[str, ...]]:
    runs = tuple(read_ledger(ledger_path(settings.state_dir)))
    log_file = settings.log_file
    try:
        log_size = log_file.stat().st_size
    except OSError:
        log_size = 0
    limit = settings.crash_loop_limit
    tail: list[str] = []
    if limit and len(runs) >= limit:
        tail = log_tail(log_file, runs[-limit].log_offset)
    return runs, log_size, tuple(tail)


def _checkpoint_size(settings: Settings) -> tuple[int, str]:
    if settings.checkpoint_size_gb is not None:
        return int(settings.checkpoint_size_gb * 1e9), "CHECKPOINT_SIZE_GB"
    size = max(largest_checkpoint_bytes(settings.output_dir), largest_checkpoint_bytes(settings.backup_dir))
    if size:
        return size, "largest checkpoint present"
    return PRESETS[
        settings.model_preset
    ].estimated_checkpoint_bytes(), f"estimate for {settings.model_preset}"


def _wait_for_inputs(settings: Settings) -> list[CheckResult]:
    """Give late mounts and files still being copied a bounded time to settle."""
    results = []
    timeout = settings.wait_timeout_s
    if not wait_for_path(settings.dataset_dir, timeout):
        results.append(
            CheckResult(
                "wait",
                FAIL,
                f"DATASET_DIR {settings.dataset_dir} did not appear within {timeout:g} s",
                "mount the dataset volume (compose.yaml) or fix DATASET_DIR; WAIT_TIMEOUT_S sets the wait",
            )
        )
    pretrained = settings.pretrained_checkpoint
    if pretrained is not None and "pretrained" in settings.checkpoint_sources:
        if not wait_for_path(pretrained, timeout):
            results.append(
                CheckResult(
                    "wait",
                    WARN,
                    f"PRETRAINED_CHECKPOINT {pretrained} did not appear within {timeout:g} s",
                    "mount the pretrained checkpoint (compose.yaml) or fix PRETRAINED_CHECKPOINT",
                )
            )
        elif not wait_until_stable(pretrained, timeout):
            results.append(
                CheckResult(
                    "wait",
                    WARN,
                    f"PRETRAINED_CHECKPOINT {pretrained} was still growing after {timeout:g} s",
                    "let the copy finish, then start again",
                )
            )
    return results


def describe_costs(cost_ms: Mapping[str, float]) -> dict[str, Any]:
    return {name: round(value, 1) for name, value in sorted(cost_ms.items())}
