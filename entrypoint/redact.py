"""Secrets from the environment never reach a report or a log."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_EXPLICIT = {"WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
MASK = "***"
_MIN_SECRET_LENGTH = 4  # shorter values ("1", "no") would mask ordinary words everywhere


def is_secret_name(name: str) -> bool:
    return name.upper() in _EXPLICIT or bool(_SECRET_NAME.search(name))


def secret_values(*sources: Mapping[str, str]) -> tuple[str, ...]:
    """Values of every secret-named variable in the given mappings, longest first."""
    found = {
        value
        for source in sources
        for name, value in source.items()
        if value and is_secret_name(name) and len(value) >= _MIN_SECRET_LENGTH
    }
    return tuple(sorted(found, key=len, reverse=True))


class Redactor:
    """Replaces every known secret value in a text with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """A copy of `env` safe to show: secret-named variables masked, other values redacted."""
        return {name: (MASK if is_secret_name(name) else self(value)) for name, value in env.items()}
