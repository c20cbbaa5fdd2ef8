"""The plan: a pure function of the settings, the probes' facts and the checkpoint decision. No I/O.

It holds every check result, the ordered actions `preflight run` will perform (and `preflight check` lists),
the trainer's command line, its environment and the handoff document. A newcomer adds a check by writing a
`facts -> CheckResult` function in `checks/` and one line in `plan_preflight`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from entrypoint import __version__
from entrypoint import actions as act
from entrypoint.actions import Action
from entrypoint.checkpoints.resolve import CheckpointPlan
from entrypoint.checks.disk import check_disk, saves_needed
from entrypoint.checks.gpu import check_gpu, check_processes
from entrypoint.checks.guards import crash_loop_check, gpu_gone_check, superseded_check
from entrypoint.checks.limits import check_init, check_ulimits
from entrypoint.checks.logger import check_logger
from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, worst
from entrypoint.checks.shm import check_shm
from entrypoint.checks.writable import check_writable
from entrypoint.cpu_plan import CpuPlan, plan_cpu
from entrypoint.facts import FOLDER_LABELS, Facts
from entrypoint.handoff import Handoff, TrainingOptions
from entrypoint.ledger import ledger_path
from entrypoint.machines import apply_machine_environment, machine_check
from entrypoint.modes import SafeMode, mode_for
from entrypoint.probes.cpu import CpuFacts
from entrypoint.readiness.fingerprint import FILE_NAME as FINGERPRINT_FILE
from entrypoint.settings import SPECS, LoadedSettings, Settings

LOCK_FIX = "stop the other trainer first (docker compose stop train), or give this run another OUTPUT_DIR"


@dataclass(frozen=True)
class Plan:
    settings: Settings
    mode: SafeMode
    cpu: CpuPlan
    facts: Facts
    workers: int  # DataLoader workers per process the trainer will really start
    checks: list[CheckResult]
    checkpoint: CheckpointPlan
    actions: tuple[Action, ...]
    argv: list[str]
    env: dict[str, str]  # the trainer's environment, without the handoff's own variables
    handoff: Handoff | None  # None when nothing may start (a failed check)
    cost_ms: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return worst(check.status for check in self.checks)

    @property
    def report_dir(self) -> Path:
        return self.settings.state_dir


def plan_preflight(
    loaded: LoadedSettings,
    facts: Facts,
    checkpoint: CheckpointPlan,
    environ: Mapping[str, str],
    fingerprint: CheckResult | None = None,
    *,
    force: bool = False,
) -> Plan:
    """`fingerprint`: how the dataset and batch plan compare with the run that wrote the checkpoint;
    `force`: start once although the crash-loop breaker would refuse."""
    settings = loaded.settings
    mode = mode_for(settings)
    cpu = plan_cpu(
        facts.cpu,
        override=settings.cpu_limit,
        reserve=settings.cpu_reserve,
        requested_workers=settings.dataloader_workers,
        processes=facts.processes,
        torch_threads=settings.torch_threads,
    )
    workers = mode.workers(cpu.workers)
    layout, layout_problem = mode.layout(settings) if facts.builtin else ([], None)
    checks = [
        *_machine_checks(loaded, facts, cpu, mode, workers, environ),
        *_run_checks(settings, facts, force),
        *([layout_problem] if layout_problem is not None else []),
        CheckResult("checkpoint", checkpoint.status, checkpoint.message, checkpoint.fix),
        *([fingerprint] if fingerprint is not None else []),
        *([machine_check(settings)] if settings.num_machines > 1 else []),
    ]
    mixed_precision = settings.mixed_precision if facts.gpu.count else "no"
    env = trainer_environment(loaded, environ, mode.environment(settings, mixed_precision))
    apply_machine_environment(env, settings)
    handoff = None
    actions: tuple[Action, ...] = ()
    if worst(check.status for check in checks) != FAIL:
        handoff = _handoff(settings, facts, checkpoint, cpu, workers, mixed_precision)
        actions = (
            *_folder_actions(settings, facts),
            *checkpoint.actions,
            *layout,
            *_record(settings, facts, checkpoint),
        )
        if facts.builtin and settings.trainer_mode == "safe":
            # Only the built-in trainer records its end: another trainer's starts would all look killed.
            actions = (*actions, _record_start(settings, facts, handoff))
    return Plan(
        settings=settings,
        mode=mode,
        cpu=cpu,
        facts=facts,
        workers=workers,
        checks=checks,
        checkpoint=checkpoint,
        actions=actions,
        argv=facts.argv,
        env=env,
        handoff=handoff,
        cost_ms=dict(facts.cost_ms),
    )


def _machine_checks(
    loaded: LoadedSettings,
    facts: Facts,
    cpu: CpuPlan,
    mode: SafeMode,
    workers: int,
    environ: Mapping[str, str],
) -> list[CheckResult]:
    """This machine and its folders: settings, CPUs, GPU, shared memory, limits, folders, disk, dataset."""
    settings = loaded.settings
    checks = [_settings_check(loaded), *facts.waits, cpu_check(cpu, facts.cpu, mode)]
    checks.append(
        check_gpu(facts.gpu, require=settings.require_gpu, mixed_precision=settings.mixed_precision)
    )
    processes = check_processes(facts.processes, facts.gpu.count, settings.trainer_mode)
    checks += [processes] if processes is not None else []
    checks.append(
        check_shm(
            facts.shm, workers_total=workers * facts.processes, per_worker_mb=settings.shm_per_worker_mb
        )
    )
    checks.append(check_ulimits(facts.limits, gpus=facts.gpu.count))
    checks.append(check_init(facts.limits))
    for variable, folder in facts.folders.items():
        checks.append(check_writable(FOLDER_LABELS[variable], variable, folder))
    checks += _disk_checks(settings, facts)
    if facts.superseded:
        checks.append(superseded_check(facts.superseded))
    checks.append(facts.dataset)
    checks += facts.readiness
    checks.append(check_logger(settings.logger, environ, loaded.file_values))
    return checks


def _run_checks(settings: Settings, facts: Facts, force: bool) -> list[CheckResult]:
    """Whether this start may go ahead: the trainer, the lock, the crash-loop breaker, the GPU after a failure."""
    checks = [_trainer_check(settings, facts), _lock_check(settings, facts)]
    checks.append(crash_loop_check(facts.runs, settings.crash_loop_limit, facts.failed_runs_log, force=force))
    gone = gpu_gone_check(facts.runs, facts.gpu)
    return checks + ([gone] if gone is not None else [])


def _handoff(
    settings: Settings,
    facts: Facts,
    checkpoint: CheckpointPlan,
    cpu: CpuPlan,
    workers: int,
    mixed_precision: str,
) -> Handoff:
    return Handoff(
        checkpoint=checkpoint.load_path,
        checkpoint_kind=checkpoint.kind,
        checkpoint_update=checkpoint.update or 0,
        workers=workers,
        torch_threads=cpu.threads,
        processes=facts.processes,
        mixed_precision=mixed_precision,
        output_dir=settings.output_dir,
        backup_dir=settings.backup_dir,
        dataset_dir=settings.dataset_dir,
        log_dir=settings.log_dir,
        vocab_file=settings.vocab_path,
        report=settings.state_dir / "report.json",
        training=TrainingOptions.from_settings(settings),
        preflight_version=__version__,
        machine_rank=settings.machine_rank,
        num_machines=settings.num_machines,
        collective_timeout_s=settings.collective_timeout_s,
    )


def _record_start(settings: Settings, facts: Facts, handoff: Handoff) -> Action:
    """The last action: this start in the run ledger (the crash-loop breaker's memory)."""
    return Action(
        act.RECORD_START,
        ledger_path(settings.state_dir),
        cause=f"resumes from update {handoff.checkpoint_update}",
        details={"resumed_from": handoff.checkpoint_update, "log_offset": facts.log_size},
    )


def _folder_actions(settings: Settings, facts: Facts) -> list[Action]:
    """The lock first (another trainer stops the run before anything is touched), then missing folders."""
    output = facts.folders["OUTPUT_DIR"].path
    planned = [
        Action(act.CREATE_FOLDER, f.path, required=True) for f in facts.folders.values() if not f.exists
    ]
    lock = Action(act.LOCK, output, output / settings.lock_name, "one trainer per OUTPUT_DIR", required=True)
    creates_output = [a for a in planned if a.path == output]
    rest = [a for a in planned if a.path != output]
    return [*creates_output, lock, *rest]


def _record(settings: Settings, facts: Facts, checkpoint: CheckpointPlan) -> list[Action]:
    """The dataset fingerprint this run starts with, so a later resume can tell what changed."""
    fingerprint = facts.readiness_data.get("fingerprint")
    if not fingerprint:
        return []
    path = settings.state_dir / FINGERPRINT_FILE
    details = {"fingerprint": fingerprint, "update": checkpoint.update or 0}
    return [
        Action(act.RECORD_FINGERPRINT, path, None, "for the resume checks of later runs", details=details)
    ]


def _settings_check(loaded: LoadedSettings) -> CheckResult:
    if loaded.warnings:
        return CheckResult(
            "settings",
            WARN,
            " ".join(loaded.warnings),
            "rename or remove the misspelt variable (in the .env file or the environment)",
        )
    source = str(loaded.env_file) if loaded.env_file else "environment and defaults only"
    return CheckResult("settings", OK, f"settings from {source}")


def cpu_check(plan: CpuPlan, facts: CpuFacts, mode: SafeMode) -> CheckResult:
    workers = mode.workers(plan.workers)
    message = (
        f"{plan.usable} usable CPU(s) [{plan.source}]; {workers} DataLoader worker(s) per process, "
        f"{plan.processes} training process(es); {plan.threads} torch thread(s) per process"
    )
    stock_note = mode.cpu_note(plan.workers)
    if stock_note is not None:
        return CheckResult("cpu", stock_note.status, f"{message} ({stock_note.message})", stock_note.fix)
    if plan.notes:
        message += " (" + "; ".join(plan.notes) + ")"
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


def _disk_checks(settings: Settings, facts: Facts) -> list[CheckResult]:
    backup = facts.backup_space
    # Two bind mounts of one disk show the same device but cannot hard-link: count backups as copies then.
    shared = backup is not None and backup.device == facts.output_space.device
    wanted = saves_needed(settings.keep_checkpoints, settings.backup_keep, shared)
    return check_disk(
        facts.output_space,
        backup,
        checkpoint_bytes=facts.checkpoint_bytes,
        estimate_source=facts.checkpoint_bytes_source,
        saves_wanted=wanted,
    )


def _trainer_check(settings: Settings, facts: Facts) -> CheckResult:
    if facts.trainer_problem:
        return CheckResult(
            "trainer", FAIL, facts.trainer_problem, "install it or fix TRAINER_COMMAND / the command after --"
        )
    if facts.builtin and not facts.f5_tts_installed:
        # The preflight runs without torch; the built-in trainer does not. Found here, not minutes later.
        return CheckResult(
            "trainer",
            FAIL,
            "F5-TTS and torch are not installed in this environment, so the built-in trainer cannot start",
            "`make setup-trainer` here, or check inside the image: `make preflight-docker`",
        )
    return CheckResult("trainer", OK, f"{facts.argv[0]} ({settings.trainer_mode} mode)")


def _lock_check(settings: Settings, facts: Facts) -> CheckResult:
    if facts.lock_holder:
        # A lock file that cannot be used (a link, another file) names its own fix in the problem line.
        taken = facts.lock_holder.startswith("another trainer")
        return CheckResult("lock", FAIL, facts.lock_holder, LOCK_FIX if taken else "")
    return CheckResult(
        "lock", OK, f"no other trainer is using OUTPUT_DIR ({settings.lock_name} taken by `run`)"
    )


def trainer_environment(
    loaded: LoadedSettings, environ: Mapping[str, str], mode_env: Mapping[str, str]
) -> dict[str, str]:
    """The process environment plus the .env values (the environment wins, as in Compose).

    The trainer reads the handoff, not these; they reach a TRAINER_COMMAND of the user's own and the
    libraries (WANDB_API_KEY, HF_TOKEN). Paths are the ones the preflight resolved.
    """
    env = dict(loaded.file_values)
    env.update(environ)
    for spec in SPECS:
        if spec.kind == "path":
            value = getattr(loaded.settings, spec.name.lower())
            env[spec.name] = "" if value is None else str(value)
    env.update(mode_env)
    env.pop("ENV_FILE", None)  # the values are in the environment now; re-reading the file could disagree
    return env
