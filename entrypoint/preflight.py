"""One preflight pass: probes, checks, the checkpoint decision and the trainer's command and environment.

`apply=False` (`preflight check`) changes nothing on disk; `apply=True` (`preflight run`) may create the
output folders, quarantine bad checkpoints and install the chosen one.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint import __version__, run_lock
from entrypoint.checkpoints.install import give_own_copy
from entrypoint.checkpoints.pipeline import CheckpointOutcome, resolve_checkpoint
from entrypoint.checkpoints.validate import Expectation
from entrypoint.checks.dataset import check_dataset
from entrypoint.checks.disk import check_disk, saves_needed
from entrypoint.checks.gpu import check_gpu
from entrypoint.checks.limits import check_init, check_ulimits
from entrypoint.checks.logger import check_logger
from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, worst
from entrypoint.checks.shm import check_shm
from entrypoint.checks.writable import check_writable
from entrypoint.cpu_plan import CpuPlan, plan_cpu
from entrypoint.launch import trainer_problem
from entrypoint.naming import LAST_NAME, REPORT_DIR_NAME
from entrypoint.presets import PRESETS
from entrypoint.probes.cpu import CpuFacts, probe_cpu
from entrypoint.probes.gpu import GpuFacts, probe_gpu
from entrypoint.probes.storage import (
    largest_checkpoint_bytes,
    probe_limits,
    probe_shm,
    probe_space,
)
from entrypoint.readiness import fingerprint_step, readiness_checks
from entrypoint.settings import SPECS, LoadedSettings, Settings
from entrypoint.train.commands import build_trainer_argv, prepare_stock_layout
from entrypoint.wait import wait_for_path, wait_until_stable


@dataclass
class PreflightResult:
    loaded: LoadedSettings
    mode: str  # "check" | "run"
    cpu: CpuPlan
    gpu: GpuFacts
    processes: int
    checks: list[CheckResult]
    checkpoint: CheckpointOutcome
    argv: list[str]
    env: dict[str, str]  # the complete environment the trainer is exec'd with
    notes: list[str] = field(default_factory=list)
    readiness: dict[str, Any] = field(default_factory=dict)  # batch plan and dataset facts (readiness)

    @property
    def status(self) -> str:
        return worst(check.status for check in self.checks)

    @property
    def report_dir(self) -> Path:
        return self.loaded.settings.output_dir / REPORT_DIR_NAME


def vocab_path(settings: Settings) -> Path:
    return settings.vocab_file or settings.dataset_dir / "vocab.txt"


def _wait_for_inputs(settings: Settings) -> list[CheckResult]:
    """In `run` mode, give late mounts and files still being copied a bounded time to settle."""
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


STOCK_CLI_WORKERS = 16  # f5-tts_finetune-cli never passes num_workers, so Trainer.train's default applies


def _cpu_check(plan: CpuPlan, facts: CpuFacts, stock: bool) -> CheckResult:
    workers = STOCK_CLI_WORKERS if stock else plan.workers
    message = (
        f"{plan.usable} usable CPU(s) [{plan.source}]; {workers} DataLoader worker(s) per process, "
        f"{plan.processes} training process(es); {plan.threads} torch thread(s) per process"
    )
    if plan.notes and not stock:
        message += " (" + "; ".join(plan.notes) + ")"
    if stock and plan.workers < STOCK_CLI_WORKERS:
        return CheckResult(
            "cpu",
            WARN,
            message + f" (TRAINER_MODE=stock: F5-TTS's CLI always starts {STOCK_CLI_WORKERS} workers; "
            f"the plan would be {plan.workers})",
            "use TRAINER_MODE=safe, which applies the worker plan",
        )
    if any("oversubscribed" in note or "throttled" in note for note in plan.notes):
        return CheckResult(
            "cpu",
            WARN,
            message,
            "lower DATALOADER_WORKERS / TORCH_THREADS / TRAIN_PROCESSES or raise CPU_LIMIT",
        )
    if facts.notes:
        # A limit that could not be read may be a limit that is not honoured: say so, loudly.
        return CheckResult(
            "cpu",
            WARN,
            message + "; could not read: " + "; ".join(facts.notes),
            "set CPU_LIMIT to the CPUs this container may use",
        )
    return CheckResult("cpu", OK, message)


def _disk_checks(settings: Settings) -> list[CheckResult]:
    if settings.checkpoint_size_gb is not None:
        size, source = int(settings.checkpoint_size_gb * 1e9), "CHECKPOINT_SIZE_GB"
    else:
        size = max(
            largest_checkpoint_bytes(settings.output_dir), largest_checkpoint_bytes(settings.backup_dir)
        )
        source = "largest checkpoint present"
        if not size:
            size = PRESETS[settings.model_preset].estimated_checkpoint_bytes()
            source = f"estimate for {settings.model_preset}"
    output = probe_space(settings.output_dir)
    backup = probe_space(settings.backup_dir) if settings.backup_every_updates else None
    # Two bind mounts of one disk show the same device but cannot hard-link: count backups as copies then.
    shared = backup is not None and backup.device == output.device
    wanted = saves_needed(settings.keep_checkpoints, settings.backup_keep, shared)
    return check_disk(output, backup, checkpoint_bytes=size, estimate_source=source, saves_wanted=wanted)


def _lock_check(settings: Settings, take: bool) -> CheckResult:
    fix = "stop the other trainer first (docker compose stop train), or give this run another OUTPUT_DIR"
    if not take:
        other = run_lock.held_by_other(settings.output_dir)
        if other:
            return CheckResult("lock", WARN, f"{other}: `preflight run` would stop", fix)
        return CheckResult("lock", OK, "no other trainer is using OUTPUT_DIR")
    fd, problem = run_lock.acquire(settings.output_dir)
    if fd is None:
        return CheckResult("lock", FAIL, problem or "", fix)
    return CheckResult(
        "lock", OK, f"OUTPUT_DIR locked for this run ({run_lock.LOCK_NAME}, held by the trainer)"
    )


def trainer_environment(
    loaded: LoadedSettings,
    environ: Mapping[str, str],
    plan: CpuPlan,
    outcome: CheckpointOutcome,
    report: Path,
    gpus: int,
) -> dict[str, str]:
    """The process environment plus the .env values (the environment wins, as in Compose) plus the plan."""
    env = dict(loaded.file_values)
    env.update(environ)
    # Paths as the preflight resolved them (relative ones in the .env file are relative to that file), so the
    # trainer cannot read or write anywhere else whatever its working directory.
    for spec in SPECS:
        if spec.kind == "path":
            value = getattr(loaded.settings, spec.name.lower())
            env[spec.name] = "" if value is None else str(value)
    env.update(
        {
            "PREFLIGHT_CHECKPOINT": outcome.load_path or "",
            "PREFLIGHT_CHECKPOINT_KIND": outcome.kind,
            "PREFLIGHT_CHECKPOINT_UPDATE": "" if outcome.update is None else str(outcome.update),
            "PREFLIGHT_WORKERS": str(plan.workers),
            "PREFLIGHT_TORCH_THREADS": str(plan.threads),
            "OMP_NUM_THREADS": str(plan.threads),
            "MKL_NUM_THREADS": str(plan.threads),
            "PREFLIGHT_REPORT": str(report),
            "PREFLIGHT_VERSION": __version__,
        }
    )
    if loaded.settings.trainer_mode == "stock":
        # F5-TTS's own CLI takes mixed precision from accelerate's environment, not from an option.
        env["ACCELERATE_MIXED_PRECISION"] = loaded.settings.mixed_precision if gpus else "no"
    env.pop("ENV_FILE", None)  # the values are in the environment now; re-reading the file could disagree
    return env


def run_preflight(
    loaded: LoadedSettings,
    *,
    apply: bool,
    command: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PreflightResult:
    environ = os.environ if environ is None else environ
    settings = loaded.settings
    checks: list[CheckResult] = []
    if loaded.warnings:
        checks.append(
            CheckResult(
                "settings",
                WARN,
                " ".join(loaded.warnings),
                "rename or remove the misspelt variable (in the .env file or the environment)",
            )
        )
    else:
        source = str(loaded.env_file) if loaded.env_file else "environment and defaults only"
        checks.append(CheckResult("settings", OK, f"settings from {source}"))
    if apply:
        checks += _wait_for_inputs(settings)

    gpu = probe_gpu(environ)
    processes = settings.train_processes or max(1, gpu.count)
    cpu_facts = probe_cpu()
    cpu = plan_cpu(
        cpu_facts,
        override=settings.cpu_limit,
        reserve=settings.cpu_reserve,
        requested_workers=settings.dataloader_workers,
        processes=processes,
        torch_threads=settings.torch_threads,
    )
    stock = settings.trainer_mode == "stock"
    checks.append(_cpu_check(cpu, cpu_facts, stock))
    checks.append(check_gpu(gpu, require=settings.require_gpu, mixed_precision=settings.mixed_precision))
    workers = STOCK_CLI_WORKERS if stock else cpu.workers
    checks.append(
        check_shm(probe_shm(), workers_total=workers * processes, per_worker_mb=settings.shm_per_worker_mb)
    )
    limits = probe_limits()
    checks.append(check_ulimits(limits, gpus=gpu.count))
    checks.append(check_init(limits))
    checks.append(check_writable("output", "OUTPUT_DIR", settings.output_dir, create=apply))
    if settings.backup_every_updates:
        checks.append(check_writable("backup", "BACKUP_DIR", settings.backup_dir, create=apply))
    checks.append(check_writable("log", "LOG_DIR", settings.log_dir, create=apply))
    checks += _disk_checks(settings)
    dataset_result, vocab_size = check_dataset(settings.dataset_dir, vocab_path(settings))
    checks.append(dataset_result)
    # readiness: dataset text, vocabulary coverage and the batch plan (entrypoint/readiness)
    readiness_results, readiness = readiness_checks(settings, vocab_path(settings), processes)
    checks += readiness_results
    checks.append(check_logger(settings.logger, environ, loaded.file_values))

    if command:
        argv = list(command)
    elif settings.trainer_command:
        argv = shlex.split(settings.trainer_command)
    else:
        argv = build_trainer_argv(settings, processes=processes)
    problem = trainer_problem(argv, {**environ})
    builtin = not command and not settings.trainer_command
    if problem:
        checks.append(
            CheckResult("trainer", FAIL, problem, "install it or fix TRAINER_COMMAND / the command after --")
        )
    elif builtin and importlib.util.find_spec("f5_tts") is None:
        # The preflight runs without torch; the built-in trainer does not. Found here, not minutes later.
        checks.append(
            CheckResult(
                "trainer",
                FAIL if apply else WARN,
                "F5-TTS and torch are not installed in this environment, so the built-in trainer cannot start",
                "`make setup-trainer` here, or check inside the image: `make preflight-docker`",
            )
        )
    else:
        checks.append(CheckResult("trainer", OK, f"{argv[0]} ({settings.trainer_mode} mode)"))

    checks.append(_lock_check(settings, apply and worst(check.status for check in checks) != FAIL))

    # `run` changes files (quarantine, install, links) only when it is going to start the trainer: after a
    # failed check it reports what it would have done, as `check` does.
    act = apply and worst(check.status for check in checks) != FAIL
    expect = Expectation(settings.model_preset, vocab_size)
    outcome = resolve_checkpoint(settings, apply=act, expect=expect)
    checks.append(CheckResult("checkpoint", outcome.status, outcome.message, outcome.fix))
    notes: list[str] = []
    # readiness: has the dataset or batch plan changed since the checkpoint's run? (entrypoint/readiness)
    changed, unrecorded = fingerprint_step(
        settings,
        vocab_path(settings),
        processes,
        readiness,
        checkpoint_kind=outcome.kind,
        update=outcome.update,
        record=act and outcome.status != FAIL,
    )
    checks += [changed] if changed else []
    notes += [unrecorded] if unrecorded else []
    if stock:
        ready = act and outcome.status != FAIL
        notes += prepare_stock_layout(settings, apply=ready)
        shared = give_own_copy(settings.output_dir / LAST_NAME, apply=ready)
        if shared:
            notes.append(shared)
    report_path = settings.output_dir / REPORT_DIR_NAME / "report.json"
    env = trainer_environment(loaded, environ, cpu, outcome, report_path, gpu.count)
    return PreflightResult(
        loaded, "run" if apply else "check", cpu, gpu, processes, checks, outcome, argv, env, notes, readiness
    )
