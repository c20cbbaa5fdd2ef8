"""The trainer the preflight execs: F5-TTS's own model and Trainer, configured from Settings, made crash-safe.

`SafeTrainer` extends F5-TTS's `Trainer` (no fork of its code):
- `save_checkpoint` writes the same dict F5-TTS writes (stock F5-TTS can load it), but atomically, with the
  disk-space guard, a quick validation, rotation that keeps the newest valid file, and backups;
- `load_checkpoint` loads exactly PREFLIGHT_CHECKPOINT, the file the preflight validated, by F5-TTS's rules
  (a training checkpoint resumes at its `update`, EMA-only weights start at update 0);
- the data loader handed to F5-TTS's loop is wrapped so that between two updates the loop can stop cleanly
  (SIGTERM/SIGINT, MAX_UPDATES) and the final model_last.pt is saved.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from entrypoint.errors import EXIT_CONFIG, EXIT_OK, ConfigError, PreflightError
from entrypoint.naming import LAST_NAME
from entrypoint.settings import Settings, load_settings
from entrypoint.train.commands import vocab_file_for

CHECKPOINT_KINDS = ("training", "pretrained", "scratch")
# Training ended (stopped or finished) but its final model_last.pt could not be saved: the newest saved
# state is older than the update reached. Distinct from the preflight's codes 1-4.
EXIT_LAST_NOT_SAVED = 5
TENSORBOARD_SUBDIR = "tensorboard"


@dataclass(frozen=True)
class LaunchPlan:
    """What the preflight decided for this run, passed in PREFLIGHT_* variables."""

    checkpoint: Path | None
    checkpoint_kind: str
    checkpoint_update: int | None
    workers: int
    torch_threads: int | None
    report: Path | None
    version: str


def read_launch_plan(environ: Mapping[str, str]) -> LaunchPlan:
    """Parse the PREFLIGHT_* variables; ConfigError (exit 2) when the preflight did not start us."""
    if "PREFLIGHT_CHECKPOINT" not in environ:
        raise ConfigError(
            "the trainer was started without the preflight (PREFLIGHT_CHECKPOINT is not set)",
            "start training with `preflight run`, which validates the checkpoints and picks the one to load",
        )
    raw_checkpoint = environ["PREFLIGHT_CHECKPOINT"].strip()
    kind = environ.get("PREFLIGHT_CHECKPOINT_KIND", "").strip() or (
        "training" if raw_checkpoint else "scratch"
    )
    if kind not in CHECKPOINT_KINDS:
        raise ConfigError(f"PREFLIGHT_CHECKPOINT_KIND={kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}")
    checkpoint = Path(raw_checkpoint) if raw_checkpoint else None
    if checkpoint is not None and not checkpoint.is_absolute():
        raise ConfigError(f"PREFLIGHT_CHECKPOINT={raw_checkpoint!r} is not an absolute path")
    if kind == "scratch":
        checkpoint = None
    elif checkpoint is None:
        raise ConfigError(f"PREFLIGHT_CHECKPOINT_KIND={kind} needs a PREFLIGHT_CHECKPOINT path")
    return LaunchPlan(
        checkpoint=checkpoint,
        checkpoint_kind=kind,
        checkpoint_update=_optional_int(environ, "PREFLIGHT_CHECKPOINT_UPDATE", minimum=0),
        workers=_optional_int(environ, "PREFLIGHT_WORKERS", minimum=1) or 1,
        torch_threads=_optional_int(environ, "PREFLIGHT_TORCH_THREADS", minimum=1),
        report=Path(environ["PREFLIGHT_REPORT"]) if environ.get("PREFLIGHT_REPORT") else None,
        version=environ.get("PREFLIGHT_VERSION", ""),
    )


def _optional_int(environ: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


class TrainingStopped(Exception):
    """Raised between two updates to leave F5-TTS's loop; carries the update reached."""

    def __init__(self, update: int, reason: str) -> None:
        super().__init__(reason)
        self.update = update
        self.reason = reason


class _StoppableLoader:
    """Wraps the prepared DataLoader F5-TTS iterates; counts updates and stops between them.

    When F5-TTS asks for the next batch, the previous batch's body (backward, optimizer step, EMA update,
    any checkpoint save) has finished: that is the one safe point to leave the loop.
    """

    def __init__(self, inner: Any, trainer: Any) -> None:
        self.inner = inner
        self._trainer = trainer
        self._iterated = False

    def __iter__(self) -> Iterator[Any]:
        self._trainer.check_stop()
        # With several processes and BATCH_SIZE_TYPE=frame, F5-TTS turns off even_batches: ranks may get
        # different batch counts, and check_stop's per-batch all-reduce on the rank with more batches would
        # meet the other rank's DDP collectives (a hang). Every rank stops at the smallest count instead.
        limit = self._trainer.common_batch_count(self.inner)
        if not self._iterated:
            # The first iteration forks the data loader's workers: let the commit thread go idle first so
            # no child starts with a lock (an output stream's, the log tee's) held by that thread.
            self._iterated = True
            self._trainer.saver.wait()
        if limit is not None and limit <= 0:
            self._end_epoch_early()  # another rank has no batch at all this epoch
            return
        batches = iter(self.inner)
        count = 0
        cut_short = False
        try:
            for batch in batches:
                count += 1
                yield batch
                if self._trainer.accelerator.sync_gradients:
                    self._trainer.update_count += 1
                self._trainer.check_stop()
                if limit is not None and count >= limit:
                    cut_short = True  # leave before fetching a batch the other ranks do not have
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            if cut_short:
                self._end_epoch_early()

    def _end_epoch_early(self) -> None:
        # What accelerate's DataLoaderShard does at the natural end of an epoch, skipped by leaving early:
        # the next epoch's shuffle seed, and its end-of-loader bookkeeping.
        if isinstance(getattr(self.inner, "iteration", None), int):
            self.inner.iteration += 1
        end = getattr(self.inner, "end", None)
        if callable(end):
            end()

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _is_data_loader(value: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(value, DataLoader)


def _make_trainer_class() -> type:
    """Build SafeTrainer on top of F5-TTS's Trainer (imported here: the module stays torch-free to import)."""
    import torch
    from f5_tts.model import Trainer

    from entrypoint.train.backups import BackupPolicy
    from entrypoint.train.graceful import StopRequest
    from entrypoint.train.safe_save import SafeSaver, rotate_numbered

    class _SafeTrainer(Trainer):
        def __init__(
            self,
            model: Any,
            *,
            plan: LaunchPlan,
            stop: StopRequest,
            max_updates: int,
            backups: BackupPolicy | None,
            tensorboard_dir: Path | None,
            **trainer_kwargs: Any,
        ) -> None:
            super().__init__(model, **trainer_kwargs)
            self.plan = plan
            self.stop = stop
            self.max_updates = max_updates
            self.backups = backups
            self.saver = SafeSaver(Path(self.checkpoint_path))
            self.start_update = 0
            self.update_count = 0
            self.last_saved_update: int | None = None  # newest model_last.pt that is durable and valid
            self.last_started_update: int | None = None  # newest model_last.pt written, maybe not committed
            self.exit_code = EXIT_OK
            if tensorboard_dir is not None and self.is_main:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    print(
                        "WARNING: LOGGER=tensorboard but the tensorboard package is not installed: metrics are "
                        "not logged (install tensorboard, or set LOGGER=none)"
                    )
                else:
                    # F5-TTS would write into ./runs/<name>, relative to wherever the process started.
                    from entrypoint.train.metrics import GuardedWriter

                    self.logger = "tensorboard"
                    # F5-TTS calls add_scalar unguarded: a full disk must cost the metrics, not the run.
                    self.writer = GuardedWriter(SummaryWriter(log_dir=str(tensorboard_dir)))
            self._wrap_accelerator()

        # --- stopping between updates -------------------------------------------------------------------
        def _wrap_accelerator(self) -> None:
            accelerator = self.accelerator
            prepare, skip_first_batches = accelerator.prepare, accelerator.skip_first_batches

            def prepare_wrapped(*args: Any, **kwargs: Any) -> Any:
                result = prepare(*args, **kwargs)
                if isinstance(result, tuple):
                    return tuple(_StoppableLoader(r, self) if _is_data_loader(r) else r for r in result)
                return _StoppableLoader(result, self) if _is_data_loader(result) else result

            def skip_wrapped(dataloader: Any, num_batches: int = 0) -> Any:
                inner = dataloader.inner if isinstance(dataloader, _StoppableLoader) else dataloader
                return _StoppableLoader(skip_first_batches(inner, num_batches=num_batches), self)

            accelerator.prepare = prepare_wrapped
            accelerator.skip_first_batches = skip_wrapped

        def stop_reason(self) -> str:
            wanted = 1.0 if self.stop.requested else 0.0
            if self.accelerator.num_processes > 1:
                # Every process must leave at the same update, or the next collective call hangs.
                flag = torch.tensor([wanted], device=self.accelerator.device)
                wanted = float(self.accelerator.reduce(flag, reduction="max").item())
            if wanted:
                return self.stop.signal_name or "a stop signal (on another process)"
            if self.max_updates and self.update_count >= self.max_updates:
                return f"MAX_UPDATES={self.max_updates}"
            return ""

        def check_stop(self) -> None:
            reason = self.stop_reason()
            if reason:
                raise TrainingStopped(self.update_count, reason)

        def common_batch_count(self, loader: Any) -> int | None:
            """The smallest batch count of `loader` over all processes (None: one process, or no length)."""
            if self.accelerator.num_processes <= 1:
                return None
            try:
                mine = len(loader)
            except TypeError:
                mine = -1  # no length: a huge count, so the other ranks decide
            count = torch.tensor([mine if mine >= 0 else 2**62], device=self.accelerator.device)
            return int(self.accelerator.reduce(count, reduction="min").item())

        def train(
            self, train_dataset: Any, num_workers: int = 1, resumable_with_seed: int | None = None
        ) -> int:
            """Train; returns the exit code: 0, or EXIT_LAST_NOT_SAVED when the final save failed."""
            try:
                super().train(train_dataset, num_workers=num_workers, resumable_with_seed=resumable_with_seed)
                update = self.update_count
                # F5-TTS's loop ended with its own last save; a failed commit of it gets one retry here.
                if update != self.start_update and not self.save_last_and_wait(update):
                    self.exit_code = EXIT_LAST_NOT_SAVED
                print(f"Finished {self.epochs} epochs at update {update}", flush=True)
                self.close_writer()
            except TrainingStopped as stopped:
                self.finish_stopped(stopped)
            finally:
                self.saver.close()  # every pending commit reaches the disk before the process ends
            return self.exit_code

        def save_last_and_wait(self, update: int) -> bool:
            """Save model_last.pt at `update` (unless started already), wait until durable; one retry when
            the commit of an already-started save failed. True when model_last.pt holds `update`."""
            self.save_checkpoint(update, last=True)
            self.saver.wait()
            if not self.is_main:
                return True
            if self.last_saved_update != update and self.last_started_update == update:
                # Started but not committed (a failed fsync or rename): the skip in save_checkpoint must
                # not count it as done. Main process only, without the barrier the other ranks don't join.
                self.last_started_update = None
                print(f"Retrying the save of model_last.pt at update {update}", flush=True)
                self._start_last_save(update)
                self.saver.wait()
            if self.last_saved_update != update:
                print(
                    f"WARNING: model_last.pt could not be saved at update {update}; the newest saved "
                    f"state is update {self.last_saved_update} (see the lines above)",
                    flush=True,
                )
                return False
            return True

        def finish_stopped(self, stopped: TrainingStopped) -> None:
            update, reason = stopped.update, stopped.reason
            print(file=sys.stderr, flush=True)  # end the progress bar's line
            if update == self.start_update:
                print(f"Stopped by {reason} at update {update}: nothing trained since the loaded checkpoint")
            else:
                if self.is_main and self.last_started_update != update:
                    print(f"Stopping ({reason}) at update {update}: saving model_last.pt", flush=True)
                if not self.save_last_and_wait(update):
                    self.exit_code = EXIT_LAST_NOT_SAVED
                print(f"Stopped by {reason} at update {update}", flush=True)
            for name in self.stop.repeated():
                print(f"{name} received again while stopping: ignored, the final save was not interrupted")
            self.close_writer()
            self.accelerator.end_training()

        def close_writer(self) -> None:
            if self.logger == "tensorboard" and self.is_main and getattr(self, "writer", None) is not None:
                self.writer.close()

        # --- saving -------------------------------------------------------------------------------------
        def checkpoint_dict(self, update: int) -> dict[str, Any]:
            # The same keys as F5-TTS's save_checkpoint, so stock F5-TTS loads our files.
            return dict(
                model_state_dict=self.accelerator.unwrap_model(self.model).state_dict(),
                optimizer_state_dict=self.optimizer.state_dict(),
                ema_model_state_dict=self.ema_model.state_dict(),
                scheduler_state_dict=self.scheduler.state_dict(),
                update=update,
            )

        def save_checkpoint(self, update: int, last: bool = False) -> None:
            self.accelerator.wait_for_everyone()
            if not self.is_main:
                return
            if last:
                if self.last_started_update == update:
                    return  # the loop's own save at this update already wrote it (retried if it failed)
                self._start_last_save(update)
                return
            if self.keep_last_n_checkpoints == 0:
                return
            self.saver.start(
                self.checkpoint_dict(update), f"model_{update}.pt", partial(self._numbered_saved, update)
            )

        def _start_last_save(self, update: int) -> None:
            on_done = partial(self._last_saved, update)
            # When stopping, the exit waits for this file to be durable: start the disk writes at once.
            eager = self.stop.requested
            if self.saver.start(self.checkpoint_dict(update), LAST_NAME, on_done, eager_writeback=eager):
                self.last_started_update = update

        # Called on the commit thread once the file is durable under its final name.
        def _last_saved(self, update: int, result: Any) -> None:
            if not (result.saved and result.valid):
                return
            self.last_saved_update = update
            print(f"Saved last checkpoint at update {update}", flush=True)
            if self.backups is not None:
                self.backups.after_last_save(result.path, update, stopping=self.stop.requested)

        def _numbered_saved(self, update: int, result: Any) -> None:
            if result.saved and result.valid:
                print(f"Saved checkpoint model_{update}.pt", flush=True)
                rotate_numbered(Path(self.checkpoint_path), self.keep_last_n_checkpoints, result.path)

        # --- loading exactly the checkpoint the preflight chose -----------------------------------------
        def load_checkpoint(self) -> int:
            update = self._load_planned_checkpoint()
            self.start_update = self.update_count = update
            return update

        def _load_planned_checkpoint(self) -> int:
            path = self.plan.checkpoint
            if path is None:
                print("Starting from scratch (random weights) at update 0", flush=True)
                return 0
            if not path.is_file():
                raise PreflightError(
                    f"checkpoint {path} (PREFLIGHT_CHECKPOINT) does not exist",
                    "start training with `preflight run`, which picks an existing valid checkpoint",
                )
            self.accelerator.wait_for_everyone()
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                checkpoint = {"ema_model_state_dict": load_file(str(path), device="cpu")}
            else:
                checkpoint = torch.load(str(path), weights_only=True, map_location="cpu")
            try:
                update = self._apply_checkpoint(checkpoint)
            except (RuntimeError, KeyError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                raise PreflightError(
                    f"checkpoint {path} does not fit the model ({first_line})",
                    "check MODEL_PRESET and the vocabulary (VOCAB_FILE) against the checkpoint",
                ) from None
            del checkpoint
            kind = "training" if self._had_update else "pretrained"
            if kind != self.plan.checkpoint_kind:
                print(
                    f"WARNING: the preflight called {path.name} a {self.plan.checkpoint_kind} checkpoint; "
                    f"its contents make it a {kind} one"
                )
            if (
                self.plan.checkpoint_update is not None
                and kind == "training"
                and update != self.plan.checkpoint_update
            ):
                print(
                    f"WARNING: the preflight expected update {self.plan.checkpoint_update}, "
                    f"{path.name} holds update {update}"
                )
            if kind == "training":
                fingerprint = weights_fingerprint(self.accelerator.unwrap_model(self.model).state_dict())
                print(
                    f"Resuming from {path} at update {update} (weights fingerprint {fingerprint:.17g})",
                    flush=True,
                )
            else:
                print(f"Starting from the pretrained weights of {path} at update 0", flush=True)
            return update

        def _apply_checkpoint(self, checkpoint: dict[str, Any]) -> int:
            # Mirrors F5-TTS's Trainer.load_checkpoint (1.1.22) after it has picked a file.
            for key in (
                "ema_model.mel_spec.mel_stft.mel_scale.fb",
                "ema_model.mel_spec.mel_stft.spectrogram.window",
            ):
                checkpoint["ema_model_state_dict"].pop(key, None)
            if self.is_main:
                self.ema_model.load_state_dict(checkpoint["ema_model_state_dict"])
            self._had_update = "update" in checkpoint or "step" in checkpoint
            if self._had_update:
                if "step" in checkpoint:
                    checkpoint["update"] = checkpoint["step"] // self.grad_accumulation_steps
                for key in ("mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window"):
                    checkpoint["model_state_dict"].pop(key, None)
                self.accelerator.unwrap_model(self.model).load_state_dict(checkpoint["model_state_dict"])
                self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
                if self.scheduler:
                    self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
                return int(checkpoint["update"])
            weights = {
                key.replace("ema_model.", ""): value
                for key, value in checkpoint["ema_model_state_dict"].items()
                if key not in ("initted", "update", "step")
            }
            self.accelerator.unwrap_model(self.model).load_state_dict(weights)
            return 0

    return _SafeTrainer


def weights_fingerprint(state_dict: Mapping[str, Any]) -> float:
    """Sum of every floating-point value, in float64: lets a log line show which weights were loaded."""
    import torch

    total = 0.0
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            total += float(tensor.sum(dtype=torch.float64))
    return total


def read_vocabulary(settings: Settings) -> tuple[dict[str, int], int]:
    """The vocabulary exactly as F5-TTS's get_tokenizer reads it, but from VOCAB_FILE (or DATASET_DIR)."""
    path = vocab_file_for(settings)
    try:
        with open(path, encoding="utf-8") as handle:
            vocab_char_map = {line[:-1]: index for index, line in enumerate(handle)}
    except FileNotFoundError:
        raise PreflightError(
            f"vocabulary {path} does not exist",
            "set VOCAB_FILE, or put vocab.txt (from prepare_csv_wavs) into DATASET_DIR",
        ) from None
    if settings.tokenizer in ("pinyin", "char") and vocab_char_map.get(" ") != 0:
        raise PreflightError(
            f"vocabulary {path} does not have a space as its first entry (TOKENIZER={settings.tokenizer})",
            "use TOKENIZER=custom or fix the vocabulary",
        )
    return vocab_char_map, len(vocab_char_map)


def build_model(settings: Settings) -> Any:
    from f5_tts.model import CFM, DiT, UNetT

    from entrypoint.presets import MEL_CHANNELS, MEL_SPEC_KWARGS, PRESETS

    preset = PRESETS[settings.model_preset]
    backbone = {"DiT": DiT, "UNetT": UNetT}[preset.backbone]
    vocab_char_map, vocab_size = read_vocabulary(settings)
    return CFM(
        transformer=backbone(**preset.config, text_num_embeds=vocab_size, mel_dim=MEL_CHANNELS),
        mel_spec_kwargs=dict(MEL_SPEC_KWARGS),
        vocab_char_map=vocab_char_map,
    )


def mixed_precision_for(settings: Settings) -> str:
    import torch

    return settings.mixed_precision if torch.cuda.is_available() else "no"


def build_trainer(settings: Settings, plan: LaunchPlan, model: Any, stop: Any) -> Any:
    from entrypoint.train.backups import BackupPolicy

    trainer_class = _make_trainer_class()
    backups = None
    if settings.backup_every_updates > 0:
        backups = BackupPolicy(
            settings.backup_dir,
            settings.backup_every_updates,
            settings.backup_keep,
            should_abort=lambda: stop.requested,
        )
    return trainer_class(
        model,
        plan=plan,
        stop=stop,
        max_updates=settings.max_updates,
        backups=backups,
        tensorboard_dir=settings.log_dir / TENSORBOARD_SUBDIR if settings.logger == "tensorboard" else None,
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        num_warmup_updates=settings.warmup_updates,
        save_per_updates=settings.save_every_updates,
        keep_last_n_checkpoints=settings.keep_checkpoints,
        checkpoint_path=str(settings.output_dir),
        batch_size_per_gpu=settings.batch_size,
        batch_size_type=settings.batch_size_type,
        max_samples=settings.max_samples,
        grad_accumulation_steps=settings.grad_accumulation_steps,
        max_grad_norm=settings.max_grad_norm,
        logger="wandb" if settings.logger == "wandb" else None,
        wandb_project=settings.dataset_name,
        wandb_run_name=settings.model_preset,
        last_per_updates=settings.last_every_updates,
        accelerate_kwargs={"mixed_precision": mixed_precision_for(settings)},
    )


def run(settings: Settings, plan: LaunchPlan) -> int:
    """Build everything and train; returns the exit code."""
    from entrypoint.train.graceful import install_stop_handlers

    # Before torch starts its thread pools; the preflight also set OMP/MKL variables for the same number.
    stop = install_stop_handlers()
    import torch

    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    torch.manual_seed(settings.seed)

    from entrypoint.presets import MEL_SPEC_KWARGS
    from entrypoint.train.data import load_train_dataset

    settings.output_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(settings)
    try:
        trainer = build_trainer(settings, plan, model, stop)
    except Exception as error:
        if settings.logger != "wandb" or not type(error).__module__.startswith("wandb"):
            raise
        # A rejected key or an unreachable server is a configuration problem: one line, no restart loop.
        raise ConfigError(
            f"wandb could not start ({type(error).__name__}: {str(error).splitlines()[0][:200]})",
            "check WANDB_API_KEY and the network, or set LOGGER=tensorboard",
        ) from None
    dataset = load_train_dataset(settings.dataset_dir, dict(MEL_SPEC_KWARGS))
    print(
        f"Training {settings.model_preset} on {len(dataset)} clips from {settings.dataset_dir}: "
        f"{plan.workers} data loader workers, {torch.get_num_threads()} torch threads, "
        f"mixed precision {mixed_precision_for(settings)}, checkpoints in {settings.output_dir}",
        flush=True,
    )
    return trainer.train(dataset, num_workers=plan.workers, resumable_with_seed=settings.seed)


def _offline_environment() -> None:
    # Nothing may be fetched from a model hub at run time: a missing file must be a clear error instead.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        plan = read_launch_plan(environ)
        settings = load_settings(environ).settings
    except PreflightError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code if error.exit_code else EXIT_CONFIG
    from entrypoint.logfile import TEE_MARKER, tee_output
    from entrypoint.redact import Redactor, secret_values

    if environ.get(TEE_MARKER) != "1":  # started by `preflight run`, the output is logged already
        tee_output(settings.log_dir, Redactor(secret_values(environ)))
    _offline_environment()
    try:
        return run(settings, plan)
    except PreflightError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
