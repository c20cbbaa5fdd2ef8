"""The batch plan against F5-TTS's real DynamicBatchSampler, CustomDataset and accelerate's sharding, on a
real prepared dataset (prepare_csv_wavs on synthetic wavs of 0.1 s to 33 s)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from entrypoint.readiness.batch_plan import RunSettings, dynamic_batches, frame_length, plan_batches
from tests.readiness_data import make_prepared_dataset, mixed_lengths

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.getbasetemp() / "readiness-mixed-v2", mixed_lengths())


@pytest.fixture(scope="module")
def real_dataset(mixed: Path) -> Any:
    from entrypoint.presets import MEL_SPEC_KWARGS
    from entrypoint.train.data import load_train_dataset

    return load_train_dataset(mixed, dict(MEL_SPEC_KWARGS))


def durations_of(dataset_dir: Path) -> list[float]:
    return json.loads((dataset_dir / "duration.json").read_text())["duration"]


def run_settings(**overrides: Any) -> RunSettings:
    values = dict(
        batch_size=3200,
        batch_size_type="frame",
        max_samples=64,
        grad_accumulation_steps=1,
        epochs=10,
        max_updates=0,
        warmup_updates=5,
        last_every_updates=10,
        save_every_updates=20,
        keep_checkpoints=3,
        backup_every_updates=0,
        backup_keep=3,
    )
    values.update(overrides)
    return RunSettings(**values)


def prepared_lengths(loader: Any, processes: int, even_batches: bool) -> list[int]:
    """Batches each process really iterates after accelerate's prepare_data_loader."""
    from accelerate.data_loader import prepare_data_loader

    counts = []
    for index in range(processes):
        shard = prepare_data_loader(
            loader,
            num_processes=processes,
            process_index=index,
            even_batches=even_batches,
            put_on_device=False,
        )
        counts.append(sum(1 for _ in shard.batch_sampler))
        assert len(shard) == counts[-1]
    return counts


@pytest.mark.parametrize(
    ("frames", "max_samples"), [(3200, 64), (1000, 3), (400, 64), (300, 64), (200, 2), (120, 2), (50, 64)]
)
def test_frame_batches_are_the_samplers(
    real_dataset: Any, mixed: Path, frames: int, max_samples: int
) -> None:
    from f5_tts.model.dataset import DynamicBatchSampler
    from torch.utils.data import DataLoader, SequentialSampler

    sampler = DynamicBatchSampler(
        SequentialSampler(real_dataset), frames, max_samples=max_samples, random_seed=666, drop_residual=False
    )
    durations = durations_of(mixed)
    mine = dynamic_batches([frame_length(d) for d in durations], frames, max_samples)
    assert mine == sampler.batches

    in_batches = {index for batch in sampler.batches for index in batch}
    for processes in (1, 2, 3, 4):
        plan = plan_batches(durations, run_settings(batch_size=frames, max_samples=max_samples), processes)
        assert plan.batches == len(sampler)
        assert plan.too_long_clips == len(durations) - len(in_batches)
        loader = DataLoader(real_dataset, batch_sampler=sampler)
        real = prepared_lengths(loader, processes, even_batches=False) if processes > 1 else [len(loader)]
        # The built-in trainer stops every rank at the smallest count; F5-TTS's schedule uses len().
        assert plan.batches_per_process == min(real) == real[0]
        assert plan.residual_batches == len(sampler) - sum(real)
        assert plan.updates_per_epoch == math.ceil(real[0] / 1)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_sample_batches_are_the_dataloaders(real_dataset: Any, mixed: Path, batch_size: int) -> None:
    from torch.utils.data import DataLoader

    durations = durations_of(mixed)
    for processes in (1, 2, 3):
        loader = DataLoader(real_dataset, batch_size=batch_size, shuffle=True)
        real = prepared_lengths(loader, processes, even_batches=True) if processes > 1 else [len(loader)]
        plan = plan_batches(
            durations,
            run_settings(batch_size=batch_size, batch_size_type="sample", grad_accumulation_steps=2),
            processes,
        )
        assert plan.batches_per_process == real[0] == max(real)
        # F5-TTS's Trainer.train: total_updates = ceil(len(train_dataloader) / grad_accumulation_steps) * epochs
        assert plan.scheduled_updates == math.ceil(real[0] / 2) * 10


def test_clips_outside_the_duration_filter_are_the_ones_the_dataset_replaces(
    real_dataset: Any, mixed: Path
) -> None:
    import torchaudio

    own_lengths = []
    for row in range(len(real_dataset)):
        audio, _ = torchaudio.load(real_dataset.data[row]["audio_path"])
        own_lengths.append(real_dataset.mel_spectrogram(audio).shape[-1])
    replaced = [
        row for row in range(len(real_dataset)) if real_dataset[row]["mel_spec"].shape[-1] != own_lengths[row]
    ]
    durations = durations_of(mixed)
    plan = plan_batches(
        durations, run_settings(batch_size=10**6), 1, row_durations=real_dataset.data["duration"]
    )
    assert replaced, "the dataset must contain clips outside 0.3-30 s for this test to mean anything"
    assert plan.out_of_range_clips == len(replaced)
    assert plan.out_of_range_hours == pytest.approx(sum(durations[row] for row in replaced) / 3600)
    assert plan.kept_clips == len(durations) - len(replaced)
