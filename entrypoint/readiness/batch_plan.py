"""The batch plan, computed as F5-TTS 1.1.22 will compute it, before any GPU time is spent.

- `BATCH_SIZE_TYPE=frame`: `DynamicBatchSampler` sorts the clips by frame length (seconds x 24000 / 256,
  from duration.json; a stable sort over the dataset order), fills batches up to BATCH_SIZE frames and
  MAX_SAMPLES clips, and silently skips every clip longer than BATCH_SIZE frames. With several processes
  accelerate gives each process `batches // processes` batches (the sampler says `drop_last`), so the
  remainder is left out each epoch (a different random choice, as the batches are shuffled per epoch).
- `BATCH_SIZE_TYPE=sample`: a shuffled DataLoader of BATCH_SIZE clips, the last batch kept; with several
  processes each gets `ceil(batches / processes)` (accelerate's even_batches repeats clips to fill).
- In both, `CustomDataset` replaces a clip outside 0.3-30 s (raw.arrow's duration) by the next row that is
  inside: its batch slot remains, its audio is never trained on.
- Updates per epoch are `ceil(batches / GRAD_ACCUMULATION_STEPS)`; the run stops after EPOCHS or at
  MAX_UPDATES (the built-in trainer); the learning-rate warm-up lasts WARMUP_UPDATES updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult, human_bytes

NAME = "batches"
SAMPLE_RATE = 24_000
HOP_LENGTH = 256
MIN_SECONDS, MAX_SECONDS = 0.3, 30.0  # CustomDataset's filter, both ends included
DROPPED_WARN_SHARE = 0.05
WARMUP_WARN_SHARE = 0.5


def frame_length(seconds: float) -> float:
    """CustomDataset.get_frame_len with durations given: the same float arithmetic, in the same order."""
    return seconds * SAMPLE_RATE / HOP_LENGTH


def dynamic_batches(
    frame_lengths: Sequence[float], frames_threshold: int, max_samples: int, drop_residual: bool = False
) -> list[list[int]]:
    """DynamicBatchSampler.__init__'s batches over a SequentialSampler, step for step."""
    order = sorted(range(len(frame_lengths)), key=frame_lengths.__getitem__)
    batches: list[list[int]] = []
    batch: list[int] = []
    batch_frames = 0.0
    for index in order:
        frame_len = frame_lengths[index]
        if batch_frames + frame_len <= frames_threshold and (max_samples == 0 or len(batch) < max_samples):
            batch.append(index)
            batch_frames += frame_len
        else:
            if len(batch) > 0:
                batches.append(batch)
            if frame_len <= frames_threshold:
                batch = [index]
                batch_frames = frame_len
            else:
                batch = []
                batch_frames = 0
    if not drop_residual and len(batch) > 0:
        batches.append(batch)
    return batches


def batches_per_process(batches: int, processes: int, batch_size_type: str) -> int:
    """len() of the DataLoader after accelerate.prepare on each process (BatchSamplerShard)."""
    if processes <= 1:
        return batches
    if batch_size_type == "frame":
        return batches // processes  # DynamicBatchSampler.drop_last is True
    return math.ceil(batches / processes)  # even_batches: the short last round is filled up


@dataclass(frozen=True)
class RunSettings:
    """The settings the plan depends on (a subset of entrypoint.settings.Settings)."""

    batch_size: int
    batch_size_type: str
    max_samples: int
    grad_accumulation_steps: int
    epochs: int
    max_updates: int  # 0: all epochs
    warmup_updates: int
    last_every_updates: int
    save_every_updates: int
    keep_checkpoints: int
    backup_every_updates: int
    backup_keep: int

    @classmethod
    def from_settings(cls, settings: Any, *, honour_max_updates: bool = True) -> RunSettings:
        values = {name: getattr(settings, name) for name in cls.__dataclass_fields__}
        if not honour_max_updates:
            values["max_updates"] = 0
        return cls(**values)


@dataclass
class BatchPlan:
    clips: int
    hours: float
    processes: int
    frames_threshold: int | None  # BATCH_SIZE in frames (frame mode)
    max_frame_length: float
    too_long_clips: int  # frame mode: longer than the frame budget, skipped by the sampler
    too_long_hours: float
    out_of_range_clips: int  # outside 0.3-30 s: replaced by the next clip when loaded
    out_of_range_hours: float
    kept_clips: int
    kept_hours: float
    batches: int  # in one epoch, all processes together
    batches_per_process: int
    residual_batches: int  # frame mode, several processes: batches no process gets in an epoch
    updates_per_epoch: int
    scheduled_updates: int  # updates_per_epoch x EPOCHS: what F5-TTS's scheduler is sized for
    run_updates: int  # where the run ends (MAX_UPDATES when that comes first)
    epochs_run: float
    warmup_updates: int
    warmup_share: float  # of the run
    last_saves: int
    numbered_saves: int
    numbered_kept: int
    backups: int
    backups_kept: int
    checkpoint_bytes: int
    output_bytes: int  # model_last.pt + the numbered ones kept, at the end of the run
    backup_bytes: int

    @property
    def dropped_hours(self) -> float:
        return self.too_long_hours + self.out_of_range_hours

    @property
    def dropped_share(self) -> float:
        return self.dropped_hours / self.hours if self.hours > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["dropped_hours"] = self.dropped_hours
        data["dropped_share"] = self.dropped_share
        return data


def plan_batches(
    durations: Sequence[float],
    run: RunSettings,
    processes: int,
    *,
    row_durations: Sequence[float] | None = None,
    checkpoint_bytes: int = 0,
) -> BatchPlan:
    """`durations` from duration.json (batching); `row_durations` from raw.arrow (CustomDataset's filter;
    duration.json's values when not given)."""
    processes = max(1, processes)
    filter_durations = row_durations if row_durations is not None else durations
    clips = len(durations)
    total_seconds = math.fsum(durations)
    lengths = [frame_length(d) for d in durations]
    outside = [not (MIN_SECONDS <= d <= MAX_SECONDS) for d in filter_durations]
    if len(outside) < clips:
        outside += [False] * (clips - len(outside))
    if run.batch_size_type == "frame":
        threshold: int | None = run.batch_size
        batches = dynamic_batches(lengths, run.batch_size, run.max_samples)
        too_long = [length > run.batch_size for length in lengths]
        batch_count = len(batches)
    else:
        threshold = None
        too_long = [False] * clips
        batch_count = math.ceil(clips / run.batch_size)
    too_long_seconds = math.fsum(d for d, skip in zip(durations, too_long, strict=True) if skip)
    out_of_range = [o and not t for o, t in zip(outside, too_long, strict=False)]
    out_of_range_seconds = math.fsum(d for d, o in zip(durations, out_of_range, strict=False) if o)
    kept = clips - sum(too_long) - sum(out_of_range)
    per_process = batches_per_process(batch_count, processes, run.batch_size_type)
    residual = batch_count - per_process * processes if run.batch_size_type == "frame" else 0
    updates_per_epoch = math.ceil(per_process / run.grad_accumulation_steps)
    scheduled = updates_per_epoch * run.epochs
    run_updates = min(scheduled, run.max_updates) if run.max_updates else scheduled
    warmup_share = run.warmup_updates / run_updates if run_updates else float("inf")
    last_saves = run_updates // run.last_every_updates + (1 if run_updates % run.last_every_updates else 0)
    numbered = run_updates // run.save_every_updates if run.keep_checkpoints != 0 else 0
    numbered_kept = numbered if run.keep_checkpoints < 0 else min(numbered, run.keep_checkpoints)
    backups = run_updates // run.backup_every_updates if run.backup_every_updates else 0
    backups_kept = min(backups, run.backup_keep)
    return BatchPlan(
        clips=clips,
        hours=total_seconds / 3600,
        processes=processes,
        frames_threshold=threshold,
        max_frame_length=max(lengths, default=0.0),
        too_long_clips=sum(too_long),
        too_long_hours=too_long_seconds / 3600,
        out_of_range_clips=sum(out_of_range),
        out_of_range_hours=out_of_range_seconds / 3600,
        kept_clips=kept,
        kept_hours=(total_seconds - too_long_seconds - out_of_range_seconds) / 3600,
        batches=batch_count,
        batches_per_process=per_process,
        residual_batches=residual,
        updates_per_epoch=updates_per_epoch,
        scheduled_updates=scheduled,
        run_updates=run_updates,
        epochs_run=run_updates / updates_per_epoch if updates_per_epoch else 0.0,
        warmup_updates=run.warmup_updates,
        warmup_share=warmup_share,
        last_saves=last_saves if run_updates else 0,
        numbered_saves=numbered,
        numbered_kept=numbered_kept,
        backups=backups,
        backups_kept=backups_kept,
        checkpoint_bytes=checkpoint_bytes,
        output_bytes=checkpoint_bytes * ((1 if run_updates else 0) + numbered_kept),
        backup_bytes=checkpoint_bytes * backups_kept,
    )


def _hours(value: float) -> str:
    return f"{value:.2f} h" if value >= 0.1 else f"{value * 3600:.1f} s"


def check_batch_plan(plan: BatchPlan, run: RunSettings) -> list[CheckResult]:
    budget = ""
    if plan.frames_threshold is not None:
        budget = f"BATCH_SIZE={plan.frames_threshold} frames ({plan.frames_threshold * HOP_LENGTH / SAMPLE_RATE:.1f} s)"
    if plan.clips == 0:
        return [CheckResult(NAME, FAIL, "duration.json lists no clip", "prepare a dataset with clips")]
    if plan.kept_clips == 0:
        if plan.too_long_clips == plan.clips:
            needed = math.ceil(plan.max_frame_length)
            return [
                CheckResult(
                    NAME,
                    FAIL,
                    f"no batch: all {plan.clips} clips are longer than {budget}, so F5-TTS skips every one "
                    f"and stops later with a ZeroDivisionError",
                    f"raise BATCH_SIZE to at least {needed} (the longest clip, "
                    f"{plan.max_frame_length * HOP_LENGTH / SAMPLE_RATE:.1f} s) or cut the clips shorter",
                )
            ]
        return [
            CheckResult(
                NAME,
                FAIL,
                f"no usable clip: every one of the {plan.clips} clips is longer than the frame budget or outside "
                f"{MIN_SECONDS:g}-{MAX_SECONDS:g} s (F5-TTS's dataset would loop forever looking for one)",
                f"cut the clips to {MIN_SECONDS:g}-{MAX_SECONDS:g} s and prepare the dataset again",
            )
        ]
    if plan.batches_per_process == 0:
        return [
            CheckResult(
                NAME,
                FAIL,
                f"{plan.batches} batch(es) per epoch for {plan.processes} processes: each process gets none "
                f"(accelerate leaves out the remainder), so training stops with a ZeroDivisionError",
                "use fewer TRAIN_PROCESSES, a smaller BATCH_SIZE, or more clips",
            )
        ]
    results = []
    per = f" per process ({plan.processes} processes)" if plan.processes > 1 else ""
    summary = (
        f"{plan.kept_clips} of {plan.clips} clips ({_hours(plan.kept_hours)} of {_hours(plan.hours)}) in "
        f"{plan.batches_per_process} batches{per} per epoch, {plan.updates_per_epoch} updates per epoch; "
        f"{plan.run_updates} updates ({plan.epochs_run:.3g} epochs), warm-up {plan.warmup_updates} "
        f"({plan.warmup_share:.0%}); saves: {plan.numbered_saves} numbered ({plan.numbered_kept} kept), "
        f"{plan.backups_kept} backup(s), {human_bytes(plan.output_bytes + plan.backup_bytes)} at the end"
    )
    if plan.residual_batches:
        summary += f"; {plan.residual_batches} batch(es) per epoch go to no process"
    results.append(CheckResult(NAME, OK, summary))
    if plan.dropped_share > DROPPED_WARN_SHARE:
        parts = []
        if plan.too_long_clips:
            parts.append(
                f"{plan.too_long_clips} clips ({_hours(plan.too_long_hours)}) longer than {budget} are skipped "
                f"by the batch sampler"
            )
        if plan.out_of_range_clips:
            parts.append(
                f"{plan.out_of_range_clips} clips ({_hours(plan.out_of_range_hours)}) outside "
                f"{MIN_SECONDS:g}-{MAX_SECONDS:g} s are replaced by the next clip"
            )
        fix = f"cut the clips to {MIN_SECONDS:g}-{MAX_SECONDS:g} s"
        if plan.too_long_clips:
            fix = f"raise BATCH_SIZE to at least {math.ceil(plan.max_frame_length)} frames, or " + fix
        results.append(
            CheckResult(
                NAME,
                WARN,
                f"{plan.dropped_share:.0%} of the audio is never trained on: " + "; ".join(parts),
                fix,
            )
        )
    if plan.warmup_share > WARMUP_WARN_SHARE:
        results.append(
            CheckResult(
                NAME,
                WARN,
                f"the learning-rate warm-up (WARMUP_UPDATES={run.warmup_updates}) is {plan.warmup_share:.0%} of "
                f"the run's {plan.run_updates} updates: most of the run trains below the set learning rate",
                f"lower WARMUP_UPDATES (e.g. {max(1, plan.run_updates // 10)}, a tenth of the run) or train longer "
                "(EPOCHS, MAX_UPDATES)",
            )
        )
    return results
