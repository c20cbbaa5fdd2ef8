"""Model architectures as F5-TTS's fine-tuning CLI defines them, plus a tiny one for tests and the demo.

Torch-free on purpose: the preflight uses these to check tensor shapes in a checkpoint before the trainer
spends minutes building the model, and to estimate the size of a checkpoint for the disk check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MEL_CHANNELS = 100  # F5-TTS's 24 kHz vocos mel settings: n_fft 1024, hop 256, win 1024, 100 mels
MEL_SPEC_KWARGS: dict[str, Any] = {
    "n_fft": 1024,
    "hop_length": 256,
    "win_length": 1024,
    "n_mel_channels": MEL_CHANNELS,
    "target_sample_rate": 24000,
    "mel_spec_type": "vocos",
}


@dataclass(frozen=True)
class Preset:
    name: str
    backbone: str  # "DiT" or "UNetT" (F5-TTS class names)
    config: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the backbone
    parameters_millions: float = 0.0  # for checkpoint size estimates (model + EMA + AdamW = 16 bytes each)

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def text_dim(self) -> int:
        # F5-TTS's UNetT defaults text_dim to mel_dim when the preset does not set it.
        return int(self.config.get("text_dim", MEL_CHANNELS))

    def estimated_checkpoint_bytes(self) -> int:
        """fp32 model + fp32 EMA + two fp32 AdamW moments per parameter."""
        return int(self.parameters_millions * 1e6 * 16)


PRESETS: dict[str, Preset] = {
    "F5TTS_v1_Base": Preset(
        "F5TTS_v1_Base",
        "DiT",
        {"dim": 1024, "depth": 22, "heads": 16, "ff_mult": 2, "text_dim": 512, "conv_layers": 4},
        336.0,
    ),
    "F5TTS_Base": Preset(
        "F5TTS_Base",
        "DiT",
        {
            "dim": 1024,
            "depth": 22,
            "heads": 16,
            "ff_mult": 2,
            "text_dim": 512,
            "text_mask_padding": False,
            "conv_layers": 4,
            "pe_attn_head": 1,
        },
        337.0,
    ),
    "E2TTS_Base": Preset(
        "E2TTS_Base",
        "UNetT",
        {"dim": 1024, "depth": 24, "heads": 16, "ff_mult": 4, "text_mask_padding": False, "pe_attn_head": 1},
        333.0,
    ),
    "tiny": Preset(
        "tiny",
        "DiT",
        {"dim": 64, "depth": 2, "heads": 2, "ff_mult": 2, "text_dim": 32, "conv_layers": 1},
        0.3,
    ),
}


def vocab_size_of(vocab_file_text: str) -> int:
    """Number of entries F5-TTS's get_tokenizer builds from a vocab.txt: the trainer's reader's count."""
    from entrypoint.vocab import vocabulary_from_text

    return len(vocabulary_from_text(vocab_file_text))
