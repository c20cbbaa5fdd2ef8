"""The stock-mode invariant with F5-TTS itself: after resolve_checkpoint(apply=True), the real
`Trainer.load_checkpoint()` loads the file the preflight chose and returns its update."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from entrypoint.checkpoints.f5_rule import f5_choice
from tests.ckpt_templates import build_templates, flip_tensor_byte, make_settings, place, resolve_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.trainer]

VOCAB_SIZE = 32  # tests/ckpt_factory.py's default, so the templates fit this model


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("f5_tts")
    return build_templates(tmp_path_factory.mktemp("templates"))


def f5_trainer(checkpoint_path: Path) -> Any:
    """F5-TTS's own Trainer around the tiny CFM(DiT) the templates were saved from."""
    from f5_tts.model import CFM, DiT, Trainer
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    from entrypoint.presets import MEL_CHANNELS, MEL_SPEC_KWARGS, PRESETS

    model = CFM(
        transformer=DiT(**PRESETS["tiny"].config, text_num_embeds=VOCAB_SIZE, mel_dim=MEL_CHANNELS),
        mel_spec_kwargs=MEL_SPEC_KWARGS,
    )
    trainer = Trainer(
        model,
        epochs=1,
        learning_rate=1e-4,
        num_warmup_updates=10,
        checkpoint_path=str(checkpoint_path),
        batch_size_per_gpu=2,
        batch_size_type="sample",
        logger=None,
    )
    # Trainer.train() builds the scheduler just before calling load_checkpoint(); do the same.
    warmup = LinearLR(trainer.optimizer, start_factor=1e-8, end_factor=1.0, total_iters=10)
    decay = LinearLR(trainer.optimizer, start_factor=1.0, end_factor=1e-8, total_iters=100)
    trainer.scheduler = SequentialLR(trainer.optimizer, schedulers=[warmup, decay], milestones=[10])
    return trainer


def test_f5_crashes_on_the_damaged_folder_and_loads_the_choice_after_the_preflight(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    settings = make_settings(tmp_path, trainer_mode="stock")
    out = settings.output_dir
    os.truncate(place(templates["400"], out / "model_last.pt"), 1_700_000)
    flip_tensor_byte(place(templates["300"], out / "model_300.pt"))
    place(templates["200"], settings.backup_dir / "model_200.pt")
    with pytest.raises(RuntimeError, match="central directory"):
        f5_trainer(out).load_checkpoint()  # what the stock trainer does without the preflight
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.update == 200 and outcome.source == "backups"
    assert f5_trainer(out).load_checkpoint() == 200


@pytest.mark.parametrize("seed", range(6))
def test_random_damage_f5_loads_what_the_preflight_chose(
    tmp_path: Path, templates: dict[str, Path], seed: int
) -> None:
    """Random mixes of healthy, truncated and bit-flipped files in every source."""
    rng = random.Random(seed)
    fmt = rng.choice(["pt", "st"])
    source = place(
        templates[f"pre_{fmt}"], tmp_path / "hub" / ("base.pt" if fmt == "pt" else "base.safetensors")
    )
    settings = make_settings(tmp_path, trainer_mode="stock", pretrained_checkpoint=str(source))
    out = settings.output_dir

    def damage(path: Path) -> None:
        kind = rng.choice(["healthy", "healthy", "truncated", "flipped"])
        if kind == "truncated":
            os.truncate(path, rng.randrange(1, path.stat().st_size))
        elif kind == "flipped":
            flip_tensor_byte(path)

    names = [
        ("model_last.pt", out, "400"),
        ("model_300.pt", out, "300"),
        ("model_200.pt", settings.backup_dir, "200"),
    ]
    for name, folder, template in names:
        if rng.random() < 0.7:
            damage(place(templates[template], folder / name))
    if rng.random() < 0.5:
        os.truncate(place(templates["pre_pt"], out / "pretrained_copy.pt"), 1000)
    outcome = resolve_checkpoint(settings, apply=True)
    assert outcome.status in ("ok", "warn"), outcome.message  # the pretrained source is always valid here
    assert outcome.load_path is not None
    assert f5_choice(os.listdir(out)).name == Path(outcome.load_path).name
    assert f5_trainer(out).load_checkpoint() == outcome.update
