"""Secrets from the environment never reach a report or a log."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import AnyStr, Generic

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

    def text_stream(self) -> StreamRedactor[str]:
        """A redactor for text that arrives in pieces (see StreamRedactor)."""
        return StreamRedactor(self._secrets, MASK)

    def byte_stream(self) -> StreamRedactor[bytes]:
        """A redactor for bytes that arrive in pieces (a pipe), secrets matched as UTF-8."""
        encoded = tuple(secret.encode("utf-8", "surrogateescape") for secret in self._secrets)
        return StreamRedactor(encoded, MASK.encode())


class StreamRedactor(Generic[AnyStr]):
    """Masks secrets in a stream read piece by piece, so a secret split over lines (a PEM key, a JSON
    credential) or over two reads is masked whole.

    feed() returns what is safe to pass on: everything but a tail that could still grow into a secret (never
    longer than the longest secret); that tail is held until the next piece shows it is not one, or until
    finish().
    """

    def __init__(self, secrets: tuple[AnyStr, ...], mask: AnyStr) -> None:
        self._secrets = tuple(sorted((s for s in secrets if s), key=len, reverse=True))
        self._mask = mask
        self._pending = mask[:0]
        bar: AnyStr = "|" if isinstance(mask, str) else b"|"  # type: ignore[assignment]
        # Longest first: at one position the longest secret wins, as in Redactor.
        escaped = [re.escape(secret) for secret in self._secrets]
        self._pattern = re.compile(bar.join(escaped)) if escaped else None

    def feed(self, piece: AnyStr) -> AnyStr:
        data = self._pending + piece
        if self._pattern is None:
            self._pending = data[:0]
            return data
        hold = self._partial_start(data)
        shown = []
        position = 0
        for match in self._pattern.finditer(data):
            if match.start() >= hold:
                break
            shown += [data[position : match.start()], self._mask]
            position = match.end()
        cut = max(position, hold)
        shown.append(data[position:cut])
        self._pending = data[cut:]
        return data[:0].join(shown)

    def finish(self) -> AnyStr:
        """The held tail (the stream has ended): masked where it holds a whole secret."""
        rest, self._pending = self._pending, self._pending[:0]
        return self._pattern.sub(self._mask, rest) if self._pattern is not None else rest

    def _partial_start(self, data: AnyStr) -> int:
        """The earliest position from which `data` is the beginning of some secret (len(data) if none)."""
        end = len(data)
        earliest = end
        for secret in self._secrets:
            first = secret[:1]
            index = data.find(first, max(0, end - len(secret) + 1), earliest)
            while index != -1:
                if secret.startswith(data[index:]):
                    earliest = index
                    break
                index = data.find(first, index + 1, earliest)
        return earliest
