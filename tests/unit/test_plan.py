"""The plan on plain fact objects: no probe runs, no file is read or written."""

from __future__ import annotations

import resource
from dataclasses import replace
from pathlib import Path

from entrypoint import actions as act
from entrypoint.actions import Action
from entrypoint.checkpoints.resolve import CheckpointPlan
from entrypoint.checks.result import FAIL, OK, CheckResult
from entrypoint.checks.writable import FolderFacts
from entrypoint.facts import Facts
from entrypoint.plan import plan_preflight
from entrypoint.probes.cpu import CpuFacts, CpuLimit
from entrypoint.probes.gpu import GpuDevice, GpuFacts
from entrypoint.probes.storage import LimitFacts, ShmFacts, SpaceFacts
from entrypoint.settings import load_settings

GB = 1_000_000_000
ROOT = Path("/nowhere/project")  # never touched: the plan does no I/O


def _loaded(**values: str):
    environ = {
        "OUTPUT_DIR": str(ROOT / "output"),
        "BACKUP_DIR": str(ROOT / "backups"),
        "LOG_DIR": str(ROOT / "logs"),
        "DATASET_DIR": str(ROOT / "dataset"),
    }
    environ.update({key.upper(): value for key, value in values.items()})
    return load_settings(environ)


def _folder(path: Path, exists: bool = True) -> FolderFacts:
    return FolderFacts(path, exists, "", exists, path if exists else path.parent, "", 1000)


def _facts(loaded, *, cpus: float = 12, gpus: int = 0, **changes: object) -> Facts:
    settings = loaded.settings
    space = SpaceFacts(str(settings.output_dir), str(settings.output_dir), 1, 500 * GB, 1000 * GB)
    facts = Facts(
        gpu=GpuFacts(
            tuple(GpuDevice(i, "NVIDIA H100", 81559, f"GPU-{i}", "9.0") for i in range(gpus)),
            "550.54" if gpus else None,
            "12.8" if gpus else None,
            "nvidia-smi" if gpus else "none",
            None if gpus else "nvidia-smi not found",
            (),
        ),
        cpu=CpuFacts((CpuLimit(cpus, "cgroup-v2", f"cpu.max -> {cpus:g} CPUs"),), ()),
        shm=ShmFacts("/dev/shm", True, 16 * GB, 16 * GB),
        limits=LimitFacts(resource.RLIM_INFINITY, 64 << 20, 7, "docker-init"),
        folders={
            "OUTPUT_DIR": _folder(settings.output_dir),
            "BACKUP_DIR": _folder(settings.backup_dir),
            "LOG_DIR": _folder(settings.log_dir, exists=False),
        },
        output_space=space,
        backup_space=space,
        checkpoint_bytes=5 * GB,
        checkpoint_bytes_source="largest checkpoint present",
        dataset=CheckResult("dataset", OK, "raw.arrow 1 GB"),
        vocab_size=2545,
        readiness=(),
        readiness_data={},
        processes=max(1, gpus),
        argv=["/venv/bin/python", "-m", "entrypoint.train"],
        builtin=True,
        trainer_problem=None,
        f5_tts_installed=True,
        lock_holder=None,
    )
    return replace(facts, **changes)


def _checkpoint(loaded, *actions: Action) -> CheckpointPlan:
    last = loaded.settings.output_dir / "model_last.pt"
    return CheckpointPlan(None, None, last, "training", 1200, (), (), actions, "ok", f"loading {last}", "")


def test_workers_threads_and_precision_are_decided_once_into_the_handoff() -> None:
    loaded = _loaded(dataloader_workers="16", mixed_precision="bf16")
    plan = plan_preflight(loaded, _facts(loaded, cpus=12, gpus=1), _checkpoint(loaded), {})
    assert plan.status == OK
    handoff = plan.handoff
    assert handoff is not None
    assert (handoff.workers, handoff.torch_threads, handoff.processes) == (11, 12, 1)  # 12 CPUs - 1 reserved
    assert handoff.mixed_precision == "bf16" and handoff.checkpoint_update == 1200
    without_gpu = plan_preflight(loaded, _facts(loaded, cpus=12, gpus=0), _checkpoint(loaded), {})
    assert without_gpu.handoff is not None and without_gpu.handoff.mixed_precision == "no"


def test_the_lock_comes_first_and_missing_folders_are_created_by_run() -> None:
    loaded = _loaded()
    quarantine = Action(act.QUARANTINE, loaded.settings.output_dir / "model_last.pt", None, "truncated")
    plan = plan_preflight(loaded, _facts(loaded), _checkpoint(loaded, quarantine), {})
    kinds = [(a.kind, a.path.name) for a in plan.actions]
    assert kinds == [
        ("lock", "output"),
        ("create-folder", "logs"),
        ("quarantine", "model_last.pt"),
        ("record-start", "runs.json"),  # the run ledger's record of this start comes last
    ]
    writable_log = next(c for c in plan.checks if c.name == "writable-log")
    assert writable_log.status == OK and "creates it" in writable_log.message


def test_a_failed_check_plans_no_action_and_no_trainer_start() -> None:
    loaded = _loaded()
    broken = CheckResult("dataset", FAIL, "DATASET_DIR has no raw.arrow", "prepare it")
    quarantine = Action(act.QUARANTINE, loaded.settings.output_dir / "model_last.pt", None, "truncated")
    plan = plan_preflight(loaded, _facts(loaded, dataset=broken), _checkpoint(loaded, quarantine), {})
    assert plan.status == FAIL and plan.actions == () and plan.handoff is None


def test_another_trainer_holding_the_lock_fails_in_check_as_in_run() -> None:
    loaded = _loaded()
    plan = plan_preflight(
        loaded, _facts(loaded, lock_holder="another trainer is using it"), _checkpoint(loaded), {}
    )
    lock = next(c for c in plan.checks if c.name == "lock")
    assert lock.status == FAIL and plan.actions == ()


def test_stock_mode_counts_its_sixteen_workers_in_the_shm_and_cpu_checks() -> None:
    loaded = _loaded(trainer_mode="stock", shm_per_worker_mb="1024")
    small_shm = ShmFacts("/dev/shm", True, 8 * GB, 8 * GB)
    plan = plan_preflight(
        loaded, _facts(loaded, cpus=4, shm=small_shm, builtin=False), _checkpoint(loaded), {}
    )
    assert plan.workers == 16
    cpu = next(c for c in plan.checks if c.name == "cpu")
    shm = next(c for c in plan.checks if c.name == "shm")
    assert cpu.status == "warn" and "always starts 16 workers" in cpu.message
    assert shm.status == "warn" and "16 DataLoader worker(s)" in shm.message


def _failed_run(resumed_from: int, exit_code: int | None = 1):
    from entrypoint.ledger import RunRecord

    ended = None if exit_code is None else 2.0
    return RunRecord(1.0, 7, resumed_from, 0, ended, exit_code, "crash" if exit_code else "", "boom", None)


def test_a_crash_loop_in_the_ledger_fails_run_with_the_update_and_log_lines_and_records_no_start() -> None:
    loaded = _loaded(crash_loop_limit="2")
    runs = (_failed_run(500), _failed_run(500, exit_code=None))
    facts = _facts(loaded, runs=runs, failed_runs_log=("RuntimeError: Failed to decode bad.wav",))
    plan = plan_preflight(loaded, facts, _checkpoint(loaded), {})
    [loop] = [check for check in plan.checks if check.name == "crash-loop"]
    assert loop.status == FAIL and plan.handoff is None and plan.actions == ()
    assert "resumed from update 500" in loop.message and "bad.wav" in loop.message
    assert "--force" in loop.fix
    forced = plan_preflight(loaded, facts, _checkpoint(loaded), {}, force=True)
    assert forced.handoff is not None and forced.actions[-1].kind == act.RECORD_START
    assert forced.actions[-1].details["resumed_from"] == 1200


def test_device_nodes_without_an_answering_gpu_after_a_failed_run_need_the_host() -> None:
    # A GPU cannot exist here: its facts are written out, as the probe would report a lost one.
    loaded = _loaded()
    lost = GpuFacts((), None, None, "none", "nvidia-smi did not answer within 10 s", ("nvidia0", "nvidiactl"))
    plan = plan_preflight(
        loaded, _facts(loaded, gpu=lost, runs=(_failed_run(10, 7),)), _checkpoint(loaded), {}
    )
    [gone] = [check for check in plan.checks if check.name == "gpu-answers"]
    assert gone.status == FAIL and "reset the VM or the host" in gone.fix
    after_clean_end = _facts(loaded, gpu=lost, runs=(_failed_run(10, 0),))
    assert all(
        c.name != "gpu-answers"
        for c in plan_preflight(loaded, after_clean_end, _checkpoint(loaded), {}).checks
    )
    no_gpu_machine = _facts(loaded, runs=(_failed_run(10, 7),))  # no device nodes: a CPU machine
    assert all(
        c.name != "gpu-answers"
        for c in plan_preflight(loaded, no_gpu_machine, _checkpoint(loaded), {}).checks
    )


def test_superseded_copies_are_found_on_disk_and_counted_by_the_disk_check(tmp_path: Path) -> None:
    from entrypoint.facts import _superseded_copies

    output = tmp_path / "output"
    output.mkdir()
    for name in ("model_last.pt.superseded", "model_last.pt.superseded.1", "model_last.pt.superseded.2"):
        (output / name).write_bytes(b"x" * 1000)
    (output / "model_last.pt.superseded.json").write_text("{}")  # its reason file is not a copy
    (output / "model_last.pt").write_bytes(b"y")
    loaded = load_settings({"OUTPUT_DIR": str(output), "DATASET_DIR": str(tmp_path / "dataset")})
    copies = _superseded_copies(loaded.settings)
    assert [Path(path).name for path, _ in copies] == [
        "model_last.pt.superseded",
        "model_last.pt.superseded.1",
        "model_last.pt.superseded.2",
    ]
    plan = plan_preflight(loaded, _facts(loaded, superseded=copies), _checkpoint(loaded), {})
    [check] = [c for c in plan.checks if c.name == "disk-superseded"]
    assert (
        check.status == "warn" and "3 older checkpoint copies" in check.message and "2.9 KiB" in check.message
    )
    assert all(path.exists() for path in output.iterdir())  # counted, never removed
