"""Grow a vocabulary and its checkpoint together, as F5-TTS's fine-tuning UI does, without touching either.

F5-TTS's `finetune_gradio.expand_model_embeddings` appends the new symbols to the vocabulary (order kept)
and the same number of rows to the text embedding `transformer.text_embed.text_embed.weight`, new rows
drawn from a normal distribution with seed 666. Here both the model and the EMA weights grow (the UI grows
the EMA only), the files are written next to the originals through a temp file, fsync and rename, and the
new checkpoint must pass the project's deep validation against the new vocabulary before it is kept.

A training checkpoint's optimizer and scheduler state hold moments for the old row count, so they are left
out: the new file is a pretrained checkpoint (fine-tuning starts at update 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.durable import replace_text, replace_via_temp
from entrypoint.errors import CheckFailed, ConfigError
from entrypoint.vocab import vocabulary_from_text

EMBED_SUFFIX = "transformer.text_embed.text_embed.weight"
WEIGHT_KEYS = ("model_state_dict", "ema_model_state_dict")
OPTIMIZER_KEYS = ("optimizer_state_dict", "scheduler_state_dict", "update", "step")
SEED = 666  # expand_model_embeddings' seed


@dataclass(frozen=True)
class ExtendResult:
    vocab: Path
    checkpoint: Path
    old_size: int
    new_size: int
    added: tuple[str, ...]
    grown: tuple[str, ...]  # the embedding tensors that grew
    left_out: tuple[str, ...]  # top-level keys not carried over (optimizer state)


def extended_vocab_text(old_text: str, symbols: Iterable[str]) -> tuple[str, list[str]]:
    """The old vocabulary file plus each new symbol on its own line; the symbols actually added."""
    existing = {line[:-1] for line in old_text.splitlines(keepends=True)}
    added = [s for s in dict.fromkeys(symbols) if s and "\n" not in s and s not in existing]
    base = old_text if not old_text or old_text.endswith("\n") else old_text + "\n"
    return base + "".join(f"{symbol}\n" for symbol in added), added


def default_outputs(checkpoint: Path, vocab: Path, new_size: int, out_dir: Path | None) -> tuple[Path, Path]:
    """<vocab stem>_<size>.txt and <checkpoint stem>_vocab<size><suffix>, next to the originals."""
    vocab_out = (out_dir or vocab.parent) / f"{vocab.stem}_{new_size}{vocab.suffix or '.txt'}"
    checkpoint_out = (out_dir or checkpoint.parent) / f"{checkpoint.stem}_vocab{new_size}{checkpoint.suffix}"
    return vocab_out, checkpoint_out


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise CheckFailed(
            "vocab extend needs torch, which is not installed here",
            "run it in the image (docker compose run --rm train vocab extend ...) or after `make setup-trainer`",
        ) from None
    return torch


def _load(path: Path) -> tuple[dict[str, Any], bool]:
    """The checkpoint as a dict, and whether it is a .safetensors file (EMA weights only)."""
    torch = _import_torch()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"ema_model_state_dict": load_file(str(path), device="cpu")}, True
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # any reader error means the same to the user: this file cannot be used
        raise CheckFailed(
            f"{path} cannot be loaded: {str(error).splitlines()[0][:200]}",
            "check it first with `preflight validate --deep`",
        ) from None
    if not isinstance(loaded, dict) or "ema_model_state_dict" not in loaded:
        raise CheckFailed(f"{path} is not an F5-TTS checkpoint (no ema_model_state_dict)")
    return loaded, False


def _grow(checkpoint: dict[str, Any], old_size: int, new_size: int, seed: int) -> list[str]:
    torch = _import_torch()
    grown = []
    new_rows = None
    for key in WEIGHT_KEYS:
        state = checkpoint.get(key)
        if not isinstance(state, dict):
            continue
        for name in [n for n in state if n.endswith(EMBED_SUFFIX)]:
            old = state[name]
            if old.dim() != 2 or old.shape[0] != old_size + 1:
                raise CheckFailed(
                    f"the checkpoint's {name} has {old.shape[0]} rows, but the vocabulary has {old_size} symbols "
                    f"(F5-TTS needs {old_size + 1} rows: one per symbol plus its filler row)",
                    "give the vocabulary this checkpoint was trained with (VOCAB_FILE / --vocab)",
                )
            if new_rows is None:
                # One draw for model and EMA alike, as expand_model_embeddings draws it after manual_seed.
                generator = torch.Generator().manual_seed(seed)
                new_rows = torch.randn((new_size - old_size, old.shape[1]), generator=generator)
            state[name] = torch.cat([old.detach().clone(), new_rows.to(old.dtype)], dim=0)
            grown.append(f"{key}/{name}")
    if not grown:
        raise CheckFailed(f"no text embedding (*{EMBED_SUFFIX}) in the checkpoint: not an F5-TTS model")
    return grown


def _write_checkpoint(checkpoint: dict[str, Any], target: Path, safetensors: bool) -> None:
    torch = _import_torch()
    if safetensors:
        from safetensors.torch import save_file

        weights = {k: v.contiguous() for k, v in checkpoint["ema_model_state_dict"].items()}
        replace_via_temp(target, lambda temp: save_file(weights, str(temp)))
    else:
        replace_via_temp(target, lambda temp: torch.save(checkpoint, temp))


def extend_vocabulary(
    checkpoint: Path,
    vocab: Path,
    symbols: Iterable[str],
    *,
    preset: str,
    out_dir: Path | None = None,
    seed: int = SEED,
) -> ExtendResult:
    """Write the extended vocabulary and checkpoint (never overwriting a file); raises PreflightError."""
    from entrypoint.checkpoints.validate import Expectation, validate_file

    if checkpoint.suffix not in (".pt", ".safetensors"):
        raise ConfigError(f"{checkpoint} is neither a .pt nor a .safetensors checkpoint")
    try:
        old_text = vocab.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"vocabulary {vocab} cannot be read: {getattr(error, 'strerror', None) or error}"
        ) from None
    new_text, added = extended_vocab_text(old_text, symbols)
    if not added:
        raise ConfigError(f"nothing to add: every symbol is already in {vocab}")
    old_size, new_size = len(vocabulary_from_text(old_text)), len(vocabulary_from_text(new_text))
    vocab_out, checkpoint_out = default_outputs(checkpoint, vocab, new_size, out_dir)
    for path in (vocab_out, checkpoint_out):
        if path.exists():
            raise ConfigError(f"{path} exists already; it is left as it is", "move it away or use --out-dir")
    source = validate_file(checkpoint, expect=Expectation(preset, old_size))
    if not source.valid:
        raise CheckFailed(
            f"{checkpoint} does not fit {preset} with the {old_size} symbols of {vocab}: {source.cause}",
            "give the checkpoint's own vocabulary (--vocab) and model preset (--preset / MODEL_PRESET)",
        )
    loaded, is_safetensors = _load(checkpoint)
    grown = _grow(loaded, old_size, new_size, seed)
    left_out = tuple(key for key in OPTIMIZER_KEYS if key in loaded)
    for key in left_out:
        del loaded[key]
    checkpoint_out.parent.mkdir(parents=True, exist_ok=True)
    vocab_out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_checkpoint(loaded, checkpoint_out, is_safetensors)
        verdict = validate_file(checkpoint_out, deep=True, expect=Expectation(preset, new_size))
        if not verdict.valid:
            raise CheckFailed(
                f"the extended checkpoint failed validation ({verdict.cause}); nothing was kept",
                f"check that MODEL_PRESET ({preset}) is the checkpoint's model",
            )
        replace_text(vocab_out, new_text)
    except BaseException:
        # Only the files made here are removed; the originals were never opened for writing.
        with contextlib.suppress(OSError):
            checkpoint_out.unlink()
        raise
    return ExtendResult(vocab_out, checkpoint_out, old_size, new_size, tuple(added), tuple(grown), left_out)
