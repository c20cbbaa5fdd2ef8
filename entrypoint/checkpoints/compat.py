"""Does a checkpoint fit the configured model? Tensor shapes from the file against the preset and vocabulary.

F5-TTS builds the model first and then calls `load_state_dict`, which fails minutes in on a shape mismatch
with a long message. The shapes that differ between models and vocabularies are few and known, so they are
compared here from the file's header or pickle alone, and the first mismatch is named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from entrypoint.presets import MEL_CHANNELS, PRESETS, Preset

Shape = tuple[int, ...]
EMA_PREFIX = "ema_model."
DIT_HEAD_DIM = 64  # F5-TTS DiT's dim_head default; attention projections are heads * 64 wide


def _text_dim(preset: Preset) -> int:
    # UNetT's text_dim defaults to the mel channel count, DiT's is always given by the presets.
    if "text_dim" in preset.config:
        return int(preset.config["text_dim"])
    return preset.dim if preset.backbone == "DiT" else MEL_CHANNELS


def expected_shapes(preset: Preset, vocab_size: int | None) -> dict[str, tuple[int | None, ...]]:
    """Shapes that identify the architecture; None in a position means "any size"."""
    dim, text_dim = preset.dim, _text_dim(preset)
    rows = vocab_size + 1 if vocab_size is not None else None  # index 0 is F5-TTS's filler token
    shapes: dict[str, tuple[int | None, ...]] = {
        "transformer.text_embed.text_embed.weight": (rows, text_dim),
        "transformer.input_embed.proj.weight": (dim, MEL_CHANNELS * 2 + text_dim),
        "transformer.proj_out.weight": (MEL_CHANNELS, dim),
    }
    if preset.backbone == "DiT":
        heads, ff_mult = int(preset.config["heads"]), int(preset.config["ff_mult"])
        shapes["transformer.transformer_blocks.0.attn.to_q.weight"] = (heads * DIT_HEAD_DIM, dim)
        shapes["transformer.transformer_blocks.0.ff.ff.0.0.weight"] = (dim * ff_mult, dim)
    return shapes


def _count_blocks(names: list[str], pattern: re.Pattern[str]) -> int:
    return len({m.group(1) for n in names if (m := pattern.match(n))})


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def _for(preset: Preset, vocab_size: int | None) -> str:
    return f"{preset.name} with {vocab_size} symbols" if vocab_size is not None else preset.name


def check_state_dict(
    label: str, shapes: Mapping[str, Shape], preset: Preset, vocab_size: int | None
) -> str | None:
    """The first incompatibility of one state dict, in plain words, or None. Names keep their file prefix."""
    prefix = EMA_PREFIX if any(k.startswith(EMA_PREFIX) for k in shapes) else ""
    bare = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    for name, want in expected_shapes(preset, vocab_size).items():
        got = bare.get(name)
        if got is None:
            return f"missing tensor {prefix}{name} in {label} (needed by {preset.name})"
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
            wanted = tuple(g if w is None else w for w, g in zip(want, got, strict=False)) or want
            return (
                f"shape mismatch for {prefix}{name}: {_fmt(got)} in file, {_fmt(wanted)} "
                f"for {_for(preset, vocab_size)}"
            )
    names = list(bare)
    if preset.backbone == "DiT":
        counts = {
            "transformer blocks": (
                _count_blocks(names, re.compile(r"transformer\.transformer_blocks\.(\d+)\.")),
                int(preset.config["depth"]),
            ),
            "text convolution blocks": (
                _count_blocks(names, re.compile(r"transformer\.text_embed\.text_blocks\.(\d+)\.")),
                int(preset.config.get("conv_layers", 0)),
            ),
        }
    else:
        counts = {
            "transformer layers": (
                _count_blocks(names, re.compile(r"transformer\.layers\.(\d+)\.")),
                int(preset.config["depth"]),
            )
        }
    for what, (found, wanted) in counts.items():
        if found != wanted:
            return f"depth mismatch in {label}: {found} {what} in file, {wanted} for {preset.name}"
    return None


def check_compatibility(
    state_dicts: Mapping[str, Mapping[str, Shape]], preset_name: str, vocab_size: int | None
) -> str | None:
    """Check every weight state dict the trainer will load (model and EMA); the first problem, or None."""
    preset = PRESETS.get(preset_name)
    if preset is None:
        return f"unknown model preset {preset_name!r} (known: {', '.join(PRESETS)})"
    for label, shapes in state_dicts.items():
        cause = check_state_dict(label, shapes, preset, vocab_size)
        if cause:
            return cause
    return None
