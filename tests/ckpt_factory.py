"""Tiny F5-TTS checkpoints made the way F5-TTS makes them, for tests that need real files.

A training checkpoint is built exactly as `f5_tts.model.trainer.Trainer.save_checkpoint` builds it: the real
`CFM(DiT(...))` model, an `ema_pytorch.EMA` copy (as the Trainer makes it), AdamW state after one step, a
LinearLR warm-up + LinearLR decay inside a SequentialLR, and `update`; saved with `torch.save`.

    make_training_checkpoint(path, update=1200)              -> model_1200.pt-like file (3.6 MB)
    make_pretrained_checkpoint(path, fmt="safetensors")      -> EMA weights only
    truncate(path, size)                                     -> cut a file to `size` bytes

torch and f5_tts are imported on first use (importing f5_tts.model takes several seconds).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

DEFAULT_VOCAB_SIZE = 32


@functools.lru_cache(maxsize=8)
def _built(
    preset: str, vocab_size: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Model, optimizer, EMA and scheduler state dicts after one training step (cached: tensors are reused)."""
    import torch
    from ema_pytorch import EMA
    from f5_tts.model.backbones.dit import DiT
    from f5_tts.model.backbones.unett import UNetT
    from f5_tts.model.cfm import CFM
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    from entrypoint.presets import MEL_CHANNELS, MEL_SPEC_KWARGS, PRESETS

    spec = PRESETS[preset]
    backbone = {"DiT": DiT, "UNetT": UNetT}[spec.backbone]
    torch.manual_seed(0)
    model = CFM(
        transformer=backbone(**spec.config, text_num_embeds=vocab_size, mel_dim=MEL_CHANNELS),
        mel_spec_kwargs=MEL_SPEC_KWARGS,
    )
    # As Trainer.__init__ does: EMA without the online model, AdamW, warm-up then decay.
    ema = EMA(model, include_online_model=False, beta=0.9999, update_after_step=0, update_every=1)
    optimizer = AdamW(model.parameters(), lr=1e-4)
    warmup = LinearLR(optimizer, start_factor=1e-8, end_factor=1.0, total_iters=10)
    decay = LinearLR(optimizer, start_factor=1.0, end_factor=1e-8, total_iters=100)
    scheduler = SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[10])
    loss = sum((p.float() ** 2).mean() for p in model.parameters())
    loss.backward()
    optimizer.step()
    scheduler.step()
    ema.update()
    return model.state_dict(), optimizer.state_dict(), ema.state_dict(), scheduler.state_dict()


def training_state(update: int, preset: str = "tiny", vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, Any]:
    """The dict Trainer.save_checkpoint passes to torch.save."""
    model, optimizer, ema, scheduler = _built(preset, vocab_size)
    return dict(
        model_state_dict=model,
        optimizer_state_dict=optimizer,
        ema_model_state_dict=ema,
        scheduler_state_dict=scheduler,
        update=update,
    )


def _save(obj: Any, path: Path, *, crc: bool = True, **kwargs: Any) -> Path:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(crc)
    try:
        torch.save(obj, path, **kwargs)
    finally:
        torch.serialization.set_crc32_options(before)
    return path


def make_training_checkpoint(
    path: Path | str,
    update: int = 100,
    preset: str = "tiny",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    crc: bool = True,
) -> Path:
    """A full training checkpoint (model, EMA, optimizer, scheduler, update). `crc=False`: no CRCs recorded."""
    return _save(training_state(update, preset, vocab_size), Path(path), crc=crc)


def make_pretrained_checkpoint(
    path: Path | str,
    fmt: str = "pt",
    preset: str = "tiny",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Path:
    """EMA weights only, as F5-TTS publishes them: `{"ema_model_state_dict": ...}` (.pt) or a .safetensors."""
    _model, _optimizer, ema, _scheduler = _built(preset, vocab_size)
    path = Path(path)
    if fmt == "pt":
        return _save({"ema_model_state_dict": ema}, path)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ema.items()}, str(path))
        return path
    raise ValueError(f"fmt must be 'pt' or 'safetensors', not {fmt!r}")


def truncate(path: Path | str, size: int) -> Path:
    """Cut the file to `size` bytes, as an interrupted copy or save leaves it."""
    os.truncate(path, size)
    return Path(path)
