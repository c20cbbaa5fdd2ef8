"""`SafeTrainer`: F5-TTS's own `Trainer` (no fork of its code), made crash-safe.

- `save_checkpoint` writes the same dict F5-TTS writes (stock F5-TTS can load it); every save decision
  (atomic commit, disk-space guard, validation, retention, backups, retry) is the CheckpointManager's;
- `load_checkpoint` loads exactly the file the preflight chose, by F5-TTS's rules (a training checkpoint
  resumes at its `update`, EMA-only weights start at update 0);
- the data loader handed to F5-TTS's loop is wrapped so that between two updates the loop can stop cleanly
  (SIGTERM/SIGINT, MAX_UPDATES) and the final model_last.pt is saved;
- each update beats the stall watchdog (entrypoint.train.watchdog) and reports its loss and gradient norm to
  the non-finite guard (entrypoint.train.finite_guard): weights that are NaN/Inf are never saved, and a run
  of non-finite updates stops training (exit 6) with the last good model_last.pt left as it was.

Imports torch and F5-TTS: the driver imports this module only when it builds the trainer.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from f5_tts.model import Trainer

from entrypoint.errors import EXIT_LAST_NOT_SAVED, EXIT_NON_FINITE, EXIT_OK, PreflightError
from entrypoint.train.backups import BackupPolicy
from entrypoint.train.checkpoint_manager import CheckpointManager
from entrypoint.train.distributed import process_group_running
from entrypoint.train.finite_guard import FiniteGuard, NonFiniteStop, fix_line, state_is_finite
from entrypoint.train.graceful import StopRequest, shield_workers, stop_signals_held
from entrypoint.train.watchdog import Watchdog

_NO_BATCH = object()  # an epoch without a single batch
_F5_LOGGER_LINE = "Using logger:"  # F5-TTS names only its own logger; ours is reported instead


class TrainingStopped(Exception):
    """Raised between two updates to leave F5-TTS's loop; carries the update reached."""

    def __init__(self, update: int, reason: str) -> None:
        super().__init__(reason)
        self.update = update
        self.reason = reason


class StoppableLoader:
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
            self._trainer.checkpoints.wait()
        if limit is not None and limit <= 0:
            self._end_epoch_early()  # another rank has no batch at all this epoch
            return
        # The workers are forked here: by iter(), or by an adapter's first batch.
        with stop_signals_held(self.inner):
            batches = iter(self.inner)
            first = next(batches, _NO_BATCH)
        count = 0
        cut_short = False
        try:
            for batch in itertools.chain(() if first is _NO_BATCH else (first,), batches):
                count += 1
                yield batch
                if self._trainer.accelerator.sync_gradients:
                    self._trainer.update_count += 1
                    self._trainer.after_update(batch)
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


def weights_fingerprint(state_dict: Mapping[str, Any]) -> float:
    """Sum of every floating-point value, in float64: lets a log line show which weights were loaded."""
    total = 0.0
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            total += float(tensor.sum(dtype=torch.float64))
    return total


class SafeTrainer(Trainer):
    def __init__(
        self,
        model: Any,
        *,
        checkpoint: Path | None,
        stop: StopRequest,
        max_updates: int,
        backups: BackupPolicy | None,
        tensorboard_dir: Path | None,
        watchdog: Watchdog | None = None,
        finite_guard: FiniteGuard | None = None,
        dataloader_timeout_s: float = 0,
        machines: int = 1,
        **trainer_kwargs: Any,
    ) -> None:
        self.machines = machines  # > 1: machine 0 reads the checkpoint and sends it to every process
        if trainer_kwargs.get("logger") == "wandb":
            super().__init__(model, **trainer_kwargs)  # its "Using logger: wandb" is true; wandb wraps stdout
        else:
            captured = io.StringIO()
            try:
                with contextlib.redirect_stdout(captured):
                    super().__init__(model, **trainer_kwargs)
            finally:
                _replay_without_logger_line(captured.getvalue())
        self.checkpoint = checkpoint
        self.stop = stop
        self.max_updates = max_updates
        self.checkpoints = CheckpointManager(
            Path(self.checkpoint_path),
            keep_numbered=self.keep_last_n_checkpoints,
            backups=backups,
            stopping=lambda: self.stop.requested,
        )
        self.start_update = 0
        self.update_count = 0
        self.exit_code = EXIT_OK
        self.watchdog = watchdog
        if watchdog is not None:
            watchdog.machines = machines
        self.finite_guard = finite_guard or FiniteGuard(limit=0)
        self.non_finite: NonFiniteStop | None = None
        self.weights_non_finite = False
        self.dataloader_timeout_s = dataloader_timeout_s
        if self.is_main:
            self._start_metrics(tensorboard_dir)
        self._wrap_accelerator()

    def _start_metrics(self, tensorboard_dir: Path | None) -> None:
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "WARNING: LOGGER=tensorboard but the tensorboard package is not installed: metrics are "
                    "not logged (install tensorboard, or set LOGGER=none)"
                )
                return
            # F5-TTS would write into ./runs/<name>, relative to wherever the process started.
            from entrypoint.train.metrics import GuardedWriter

            self.logger = "tensorboard"
            # F5-TTS calls add_scalar unguarded: a full disk must cost the metrics, not the run.
            self.writer = GuardedWriter(SummaryWriter(log_dir=str(tensorboard_dir)))
            print(f"Metrics: tensorboard events in {tensorboard_dir}", flush=True)
        elif self.logger != "wandb":
            print("Metrics: not logged (LOGGER=none)", flush=True)

    # --- stopping between updates -----------------------------------------------------------------------
    def _wrap_accelerator(self) -> None:
        accelerator = self.accelerator
        prepare, skip_first_batches = accelerator.prepare, accelerator.skip_first_batches

        def prepare_wrapped(*args: Any, **kwargs: Any) -> Any:
            for value in args:
                if _is_data_loader(value) and value.num_workers > 0 and self.dataloader_timeout_s > 0:
                    # A worker blocked in a read becomes an error after this long, not a silent hang.
                    value.timeout = self.dataloader_timeout_s
            result = prepare(*args, **kwargs)
            for loader in result if isinstance(result, tuple) else (result,):
                if _is_data_loader(loader):
                    shield_workers(loader)
            if isinstance(result, tuple):
                return tuple(StoppableLoader(r, self) if _is_data_loader(r) else r for r in result)
            return StoppableLoader(result, self) if _is_data_loader(result) else result

        def skip_wrapped(dataloader: Any, num_batches: int = 0) -> Any:
            inner = dataloader.inner if isinstance(dataloader, StoppableLoader) else dataloader
            skipping = skip_first_batches(inner, num_batches=num_batches)  # a new loader: new workers
            if _is_data_loader(skipping):
                shield_workers(skipping)
            return StoppableLoader(skipping, self)

        accelerator.prepare = prepare_wrapped
        accelerator.skip_first_batches = skip_wrapped
        backward, clip_grad_norm = accelerator.backward, accelerator.clip_grad_norm_
        guard = self.finite_guard

        def backward_observed(loss: Any, **kwargs: Any) -> Any:
            guard.observe_loss(loss)
            return backward(loss, **kwargs)

        def clip_observed(*args: Any, **kwargs: Any) -> Any:
            norm = clip_grad_norm(*args, **kwargs)
            if norm is not None:
                guard.observe_grad_norm(norm)
            return norm

        accelerator.backward = backward_observed
        accelerator.clip_grad_norm_ = clip_observed

    def after_update(self, batch: Any) -> None:
        """Once per completed update (before check_stop): the heartbeat and the non-finite guard."""
        if self.watchdog is not None:
            self.watchdog.beat(self.update_count)
        stop = self.finite_guard.end_update(self.update_count, batch)
        if stop is not None:
            self.non_finite = stop

    def stop_reason(self) -> str:
        wanted = 1.0 if self.stop.requested else 0.0
        if self.accelerator.num_processes > 1:
            # Every process must leave at the same update, or the next collective call hangs.
            diverged = 1.0 if self.non_finite is not None else 0.0
            flags = torch.tensor([wanted, diverged], device=self.accelerator.device)
            wanted, diverged = (float(v) for v in self.accelerator.reduce(flags, reduction="max").tolist())
            if diverged and self.non_finite is None:
                self.non_finite = NonFiniteStop(
                    self.update_count, self.update_count, 0, "loss or gradient norm (on another process)", ()
                )
        if self.non_finite is not None:
            raise self.non_finite
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

    def train(self, train_dataset: Any, num_workers: int = 1, resumable_with_seed: int | None = None) -> int:
        """Train; returns the exit code: 0, EXIT_LAST_NOT_SAVED when the final save failed, EXIT_NON_FINITE
        when the loss diverged (nothing saved then)."""
        if self.watchdog is not None:
            self.watchdog.start()
        try:
            super().train(train_dataset, num_workers=num_workers, resumable_with_seed=resumable_with_seed)
            update = self.update_count
            # F5-TTS's loop ended with its own last save; a failed commit of it gets one retry.
            if update != self.start_update and not self.save_last_and_wait(update):
                self.exit_code = self._not_saved_code()
            print(f"Finished {self.epochs} epochs at update {update}", flush=True)
            self.close_writer()
        except TrainingStopped as stopped:
            self.finish_stopped(stopped)
        except NonFiniteStop as stop:
            self.finish_non_finite(stop)
        except RuntimeError as error:
            if self.watchdog is None or not _is_dataloader_timeout(error):
                raise
            self.watchdog.stalled(f"a DataLoader worker delivered no batch ({str(error).splitlines()[0]})")
            raise
        finally:
            with self._paused("save"):
                self.checkpoints.close()  # every pending commit reaches the disk before the process ends
            if self.watchdog is not None:
                self.watchdog.stop()
        return self.exit_code

    def _paused(self, phase: str) -> Any:
        return self.watchdog.paused(phase) if self.watchdog is not None else contextlib.nullcontext()

    def finish_non_finite(self, stop: NonFiniteStop) -> None:
        print(file=sys.stderr, flush=True)  # end the progress bar's line
        saved = self.checkpoints.last_saved_update
        kept = (
            f"update {saved}" if saved is not None else f"the loaded checkpoint (update {self.start_update})"
        )
        print(
            f"error: {stop}; stopped without saving that state, the newest save is {kept} -- "
            f"{fix_line(stop, self.accelerator.mixed_precision, self.optimizer.defaults.get('lr', 0.0))}",
            file=sys.stderr,
            flush=True,
        )
        self.exit_code = EXIT_NON_FINITE
        self.close_writer()
        self.accelerator.end_training()

    def _not_saved_code(self) -> int:
        return EXIT_NON_FINITE if self.weights_non_finite else EXIT_LAST_NOT_SAVED

    def state_may_be_saved(self, update: int) -> bool:
        """False (and one line) when the weights are NaN/Inf, or while the loss or gradient norm is: such a
        state never replaces a save."""
        tensors = [*self.model.parameters(), *self.ema_model.parameters()]
        self.weights_non_finite = not state_is_finite(tensors)
        if self.weights_non_finite:
            why = "the weights are NaN/Inf"
        elif self.finite_guard.in_bad_streak:
            why = "the loss or gradient norm of the latest update is NaN/Inf"
        else:
            return True
        print(f"Not saving at update {update}: {why} (the last good save stays as it is)", flush=True)
        return False

    def save_last_and_wait(self, update: int, stop_reason: str = "") -> bool:
        """model_last.pt at `update`, durable (see CheckpointManager.ensure_last); every process calls it."""
        # F5-TTS's loop ends with its own last save and then destroys the process group (end_training):
        # after a finished run there is no group left to wait on, and nothing left to wait for.
        if process_group_running():
            self.accelerator.wait_for_everyone()
        if not self.is_main:
            return True
        if not self.state_may_be_saved(update):
            return False
        with self._paused("save"):
            if stop_reason:
                return self.checkpoints.save_on_stop(update, self.checkpoint_dict, stop_reason)
            return self.checkpoints.ensure_last(update, self.checkpoint_dict)

    def finish_stopped(self, stopped: TrainingStopped) -> None:
        update, reason = stopped.update, stopped.reason
        print(file=sys.stderr, flush=True)  # end the progress bar's line
        if update == self.start_update:
            print(f"Stopped by {reason} at update {update}: nothing trained since the loaded checkpoint")
        else:
            if not self.save_last_and_wait(update, stop_reason=reason):
                self.exit_code = self._not_saved_code()
            print(f"Stopped by {reason} at update {update}", flush=True)
        for name in self.stop.repeated():
            print(f"{name} received again while stopping: ignored, the final save was not interrupted")
        self.close_writer()
        self.accelerator.end_training()

    def close_writer(self) -> None:
        if self.logger == "tensorboard" and self.is_main and getattr(self, "writer", None) is not None:
            self.writer.close()

    # --- saving: F5-TTS's loop calls this; the manager decides ---------------------------------------------
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
        if not self.is_main or not self.state_may_be_saved(update):
            return
        with self._paused("save"):
            if last:
                self.checkpoints.save_last(update, self.checkpoint_dict)
            else:
                self.checkpoints.save_numbered(update, self.checkpoint_dict)

    # --- loading exactly the checkpoint the preflight chose ---------------------------------------------
    def load_checkpoint(self) -> int:
        with self._paused("load"):
            update = self._load_chosen_checkpoint()
        self.start_update = self.update_count = update
        return update

    def _load_chosen_checkpoint(self) -> int:
        if self.machines > 1:
            from entrypoint.train.distributed import shared_checkpoint

            # Machine 0's rank 0 reads the file; every other process receives the state it read.
            path, checkpoint = shared_checkpoint(self.accelerator, self.checkpoint, self._read_checkpoint)
        else:
            path = self.checkpoint
            checkpoint = None if path is None else self._read_checkpoint(path, wait=True)
        if path is None or checkpoint is None:
            print("Starting from scratch (random weights) at update 0", flush=True)
            return 0
        try:
            update = self._apply_checkpoint(checkpoint)
        except (RuntimeError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise PreflightError(
                f"checkpoint {path} does not fit the model ({first_line})",
                "check MODEL_PRESET and the vocabulary (VOCAB_FILE) against the checkpoint",
            ) from None
        resumed = "update" in checkpoint or "step" in checkpoint
        del checkpoint
        if resumed:
            fingerprint = weights_fingerprint(self.accelerator.unwrap_model(self.model).state_dict())
            print(
                f"Resuming from {path} at update {update} (weights fingerprint {fingerprint:.17g})",
                flush=True,
            )
        else:
            print(f"Starting from the pretrained weights of {path} at update 0", flush=True)
        return update

    def _read_checkpoint(self, path: Path, wait: bool = False) -> dict[str, Any]:
        if not path.is_file():
            raise PreflightError(
                f"checkpoint {path} (chosen by the preflight) does not exist",
                "start training with `preflight run`, which picks an existing valid checkpoint",
            )
        if wait:
            self.accelerator.wait_for_everyone()
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"ema_model_state_dict": load_file(str(path), device="cpu")}
        return dict(torch.load(str(path), weights_only=True, map_location="cpu"))

    def _apply_checkpoint(self, checkpoint: dict[str, Any]) -> int:
        # Mirrors F5-TTS's Trainer.load_checkpoint (1.1.22) after it has picked a file.
        for key in (
            "ema_model.mel_spec.mel_stft.mel_scale.fb",
            "ema_model.mel_spec.mel_stft.spectrogram.window",
        ):
            checkpoint["ema_model_state_dict"].pop(key, None)
        if self.is_main:
            self.ema_model.load_state_dict(checkpoint["ema_model_state_dict"])
        if "update" in checkpoint or "step" in checkpoint:
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


def _is_dataloader_timeout(error: RuntimeError) -> bool:
    return "DataLoader timed out" in str(error)


def _is_data_loader(value: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(value, DataLoader)


def _replay_without_logger_line(text: str) -> None:
    for line in text.splitlines(keepends=True):
        if not line.startswith(_F5_LOGGER_LINE):
            sys.stdout.write(line)
    sys.stdout.flush()
