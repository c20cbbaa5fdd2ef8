"""The trainer the preflight execs: reads the preflight's handoff, builds F5-TTS's model, trains it safely.

Everything comes from the handoff document (`entrypoint.handoff`): the checkpoint to load, the CPU plan, the
mixed-precision decision, the paths and the training options. Nothing is parsed from `.env` again and
nothing the preflight decided is decided a second time. Cheap to import: torch and F5-TTS are imported when
training starts (`entrypoint.train.safe_trainer` holds the crash-safe Trainer).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entrypoint.errors import (
    EXIT_CONFIG,
    EXIT_NON_FINITE,
    EXIT_STALLED,
    CheckFailed,
    ConfigError,
    PreflightError,
)
from entrypoint.errors import EXIT_LAST_NOT_SAVED as EXIT_LAST_NOT_SAVED  # its old home; tests import it here
from entrypoint.handoff import Handoff, read_handoff
from entrypoint.vocab import read_vocabulary

TENSORBOARD_SUBDIR = "tensorboard"
# F5-TTS always asks for pinned memory; without a GPU torch warns about it on every epoch. Nothing is wrong.
_PIN_MEMORY_WITHOUT_GPU = r"'pin_memory' argument is set as true but no accelerator is found"


def vocabulary(handoff: Handoff) -> dict[str, int]:
    """The vocabulary exactly as F5-TTS's get_tokenizer reads it (entrypoint.vocab), from the handoff's file."""
    path = handoff.vocab_file
    try:
        vocab_char_map = read_vocabulary(path)
    except FileNotFoundError:
        raise PreflightError(
            f"vocabulary {path} does not exist",
            "set VOCAB_FILE, or put vocab.txt (from prepare_csv_wavs) into DATASET_DIR",
        ) from None
    tokenizer = handoff.training.tokenizer
    if tokenizer in ("pinyin", "char") and vocab_char_map.get(" ") != 0:
        raise PreflightError(
            f"vocabulary {path} does not have a space as its first entry (TOKENIZER={tokenizer})",
            "use TOKENIZER=custom or fix the vocabulary",
        )
    return vocab_char_map


def build_model(handoff: Handoff) -> Any:
    from f5_tts.model import CFM, DiT, UNetT

    from entrypoint.presets import MEL_CHANNELS, MEL_SPEC_KWARGS, PRESETS

    preset = PRESETS[handoff.training.model_preset]
    backbone = {"DiT": DiT, "UNetT": UNetT}[preset.backbone]
    vocab_char_map = vocabulary(handoff)
    return CFM(
        transformer=backbone(**preset.config, text_num_embeds=len(vocab_char_map), mel_dim=MEL_CHANNELS),
        mel_spec_kwargs=dict(MEL_SPEC_KWARGS),
        vocab_char_map=vocab_char_map,
    )


def build_trainer(handoff: Handoff, model: Any, stop: Any) -> Any:
    from entrypoint.train.backups import BackupPolicy
    from entrypoint.train.finite_guard import FiniteGuard
    from entrypoint.train.safe_trainer import SafeTrainer

    options = handoff.training
    backups = None
    if options.backup_every_updates > 0:
        backups = BackupPolicy(
            handoff.backup_dir,
            options.backup_every_updates,
            options.backup_keep,
            should_abort=lambda: stop.requested,
        )
    return SafeTrainer(
        model,
        checkpoint=handoff.checkpoint,
        stop=stop,
        max_updates=options.max_updates,
        backups=backups,
        tensorboard_dir=handoff.log_dir / TENSORBOARD_SUBDIR if options.logger == "tensorboard" else None,
        watchdog=build_watchdog(handoff),
        finite_guard=FiniteGuard(options.non_finite_limit),
        dataloader_timeout_s=options.dataloader_timeout_s,
        machines=handoff.num_machines,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        num_warmup_updates=options.warmup_updates,
        save_per_updates=options.save_every_updates,
        keep_last_n_checkpoints=options.keep_checkpoints,
        checkpoint_path=str(handoff.output_dir),
        batch_size_per_gpu=options.batch_size,
        batch_size_type=options.batch_size_type,
        max_samples=options.max_samples,
        grad_accumulation_steps=options.grad_accumulation_steps,
        max_grad_norm=options.max_grad_norm,
        logger="wandb" if options.logger == "wandb" else None,
        wandb_project=options.dataset_name,
        wandb_run_name=options.model_preset,
        last_per_updates=options.last_every_updates,
        accelerate_kwargs={"mixed_precision": handoff.mixed_precision},
    )


def _ledger(handoff: Handoff) -> Path:
    from entrypoint.ledger import ledger_path

    return ledger_path(handoff.state_dir)


def first_on_machine(environ: Mapping[str, str]) -> bool:
    """The process that speaks for this machine (its run ledger, its heartbeat): local rank 0. Every machine
    of several keeps its own record, so each one's crash-loop breaker and `preflight status` see its runs."""
    return environ.get("LOCAL_RANK", environ.get("RANK", "0")) == "0"


def build_watchdog(handoff: Handoff) -> Any:
    """The stall watchdog of this process; its heartbeat file is written by the main process only."""
    from entrypoint.ledger import STALLED
    from entrypoint.train.watchdog import HEARTBEAT_FILE, Stall, Watchdog

    options = handoff.training
    main_process = first_on_machine(os.environ)
    heartbeat = handoff.state_dir / HEARTBEAT_FILE

    def on_stall(stall: Stall) -> None:
        if main_process:
            record_end(handoff, EXIT_STALLED, STALLED, f"{stall.reason} in phase {stall.phase}")

    return Watchdog(
        timeout_s=options.stall_timeout_s,
        min_s=options.stall_min_s,
        on_stall=on_stall,
        heartbeat_path=heartbeat if main_process else None,
        max_updates=options.max_updates,
    )


def record_end(handoff: Handoff, exit_code: int, outcome: str, detail: str = "") -> None:
    """The end of this start in the run ledger; a ledger that cannot be written costs only the record."""
    from entrypoint.ledger import record_end as write_end

    trainer = _RUNNING.get("trainer")
    saved = trainer.checkpoints.last_saved_update if trainer is not None else None
    try:
        if not write_end(
            _ledger(handoff), exit_code=exit_code, outcome=outcome, detail=detail, last_saved_update=saved
        ):
            # Started by a launcher (accelerate) that the preflight exec'd: the start is the parent's.
            write_end(
                _ledger(handoff),
                exit_code=exit_code,
                outcome=outcome,
                detail=detail,
                last_saved_update=saved,
                pid=os.getppid(),
            )
    except OSError as error:
        print(f"WARNING: the run ledger could not be written: {error.strerror or error}", flush=True)


_RUNNING: dict[str, Any] = {}  # the trainer once built: its newest durable save goes into the ledger


def run(handoff: Handoff) -> int:
    """Build everything and train; returns the exit code."""
    from entrypoint.train.graceful import install_stop_handlers

    # Before torch starts its thread pools; the preflight also set OMP/MKL variables for the same number.
    stop = install_stop_handlers()
    import torch

    torch.set_num_threads(handoff.torch_threads)
    torch.manual_seed(handoff.training.seed)
    warnings.filterwarnings("ignore", message=_PIN_MEMORY_WITHOUT_GPU, category=UserWarning)

    from entrypoint.presets import MEL_SPEC_KWARGS
    from entrypoint.train.data import load_train_dataset

    handoff.output_dir.mkdir(parents=True, exist_ok=True)
    from entrypoint.train.distributed import launched_processes, start_process_group

    if launched_processes(os.environ) > 1:
        # Every launch of several processes, one machine or many: one group, COLLECTIVE_TIMEOUT_S bounded.
        start_process_group(handoff.collective_timeout_s)
    model = build_model(handoff)
    try:
        trainer = build_trainer(handoff, model, stop)
    except Exception as error:
        if handoff.training.logger != "wandb" or not type(error).__module__.startswith("wandb"):
            raise
        # A rejected key or an unreachable server is a configuration problem: one line, no restart loop.
        raise ConfigError(
            f"wandb could not start ({type(error).__name__}: {str(error).splitlines()[0][:200]})",
            "check WANDB_API_KEY and the network, or set LOGGER=tensorboard",
        ) from None
    _RUNNING["trainer"] = trainer
    dataset = load_train_dataset(handoff.dataset_dir, dict(MEL_SPEC_KWARGS))
    print(
        f"Training {handoff.training.model_preset} on {len(dataset)} clips from {handoff.dataset_dir}: "
        f"{handoff.workers} data loader workers, {torch.get_num_threads()} torch threads, "
        f"mixed precision {handoff.mixed_precision}, checkpoints in {handoff.output_dir}",
        flush=True,
    )
    try:
        return trainer.train(dataset, num_workers=handoff.workers, resumable_with_seed=handoff.training.seed)
    except Exception as error:
        from entrypoint.train.distributed import describe_peer_failure, is_peer_failure

        if launched_processes(os.environ) == 1 or not is_peer_failure(error):
            raise
        what, timed_out = describe_peer_failure(error, handoff.collective_timeout_s)
        fix = (
            "every machine stops; restart them all (the restart policy does) and they resume from machine 0's "
            "newest valid checkpoint"
        )
        if timed_out:
            fix += "; if that machine was only slow, not stopped, raise COLLECTIVE_TIMEOUT_S"
        raise CheckFailed(
            f"lost another machine of the {handoff.num_machines} (machine {handoff.machine_rank} here): {what}",
            fix,
        ) from None


def _offline_environment() -> None:
    # Nothing may be fetched from a model hub at run time: a missing file must be a clear error instead.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        handoff = read_handoff(environ)
    except PreflightError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code if error.exit_code else EXIT_CONFIG
    from entrypoint.logfile import TEE_MARKER, tee_output
    from entrypoint.naming import log_file_name
    from entrypoint.redact import Redactor, secret_values

    if environ.get(TEE_MARKER) != "1":  # started by `preflight run`, the output is logged already
        tee_output(handoff.log_dir, Redactor(secret_values(environ)), log_file_name(handoff.machine_rank))
    _offline_environment()
    from entrypoint import ledger

    main_process = first_on_machine(environ)
    try:
        code = run(handoff)
    except PreflightError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if main_process:
            record_end(handoff, error.exit_code, ledger.CRASHED, str(error))
        return error.exit_code
    except Exception as error:
        if main_process:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            record_end(handoff, 1, ledger.CRASHED, f"{type(error).__name__}: {first}"[:300])
        raise
    if main_process:
        outcome = {EXIT_NON_FINITE: ledger.NON_FINITE, EXIT_LAST_NOT_SAVED: ledger.NOT_SAVED}
        record_end(handoff, code, outcome.get(code, ledger.FINISHED if code == 0 else ledger.CRASHED))
    return code
