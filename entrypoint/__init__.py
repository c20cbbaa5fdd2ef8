"""Preflight entrypoint for crash-safe F5-TTS fine-tuning in a container."""

__version__ = "0.1.0"
