"""The vocabulary path for the trainer (the trainer's own reader replaces this module)."""

from __future__ import annotations

from pathlib import Path

from entrypoint.settings import Settings


def vocab_file_for(settings: Settings) -> Path:
    return settings.vocab_path
