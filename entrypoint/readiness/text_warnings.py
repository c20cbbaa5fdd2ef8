"""Text a user should fix before training: numbers and symbols, empty texts, texts too long for their clip,
and letters written in another Unicode normalisation form than the vocabulary's.

Each finding is a WARN with counts and an example text; the data for `check --json` has the details.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from entrypoint.checks.result import OK, WARN, CheckResult
from entrypoint.readiness.dataset_facts import DatasetFacts
from entrypoint.readiness.vocabulary import short, show_token

NAME = "text"
# Speech rarely goes beyond ~20 characters a second; far more means the text belongs to another clip.
MAX_CHARS_PER_SECOND = 30.0
_SYMBOL_PUNCTUATION = set("#%&*/@\\_|~^<>=+")
SHOWN = 6


def is_digit_token(token: str) -> bool:
    return any(unicodedata.category(c) == "Nd" for c in token)


def is_symbol_token(token: str) -> bool:
    return any(unicodedata.category(c).startswith("S") or c in _SYMBOL_PUNCTUATION for c in token)


def is_decomposed(token: str) -> bool:
    """A combining mark on its own (NFD 'a' + U+0303) or a token that NFC would change."""
    return any(unicodedata.combining(c) for c in token) or unicodedata.normalize("NFC", token) != token


def _list(facts: DatasetFacts, tokens: list[str]) -> str:
    assert facts.text is not None
    text = facts.text
    ordered = sorted(tokens, key=lambda t: (-text.counts[t], t))
    shown = ", ".join(f"{show_token(t)} x{text.counts[t]}" for t in ordered[:SHOWN])
    more = f" and {len(ordered) - SHOWN} more" if len(ordered) > SHOWN else ""
    example = short(text.text_of(text.first_row[ordered[0]]))
    return f"{shown}{more} (e.g. {example})"


def check_text(facts: DatasetFacts | None) -> tuple[list[CheckResult], dict[str, Any]]:
    if facts is None or facts.text is None:
        reason = facts.text_skipped if facts is not None else "the dataset could not be read"
        return [CheckResult(NAME, WARN, f"text not checked: {reason}")], {}
    text = facts.text
    tokens = list(text.counts)
    results: list[CheckResult] = []
    data: dict[str, Any] = {}

    digits = [t for t in tokens if is_digit_token(t)]
    symbols = [t for t in tokens if is_symbol_token(t) and t not in digits]
    if digits or symbols:
        rows = text.rows_using(set(digits) | set(symbols))
        parts = []
        if digits:
            parts.append("digits " + _list(facts, digits))
        if symbols:
            parts.append("symbols " + _list(facts, symbols))
        data["numbers_and_symbols"] = {"rows": rows, "digits": digits, "symbols": symbols}
        results.append(
            CheckResult(
                NAME,
                WARN,
                f"{rows} text(s) have {'; '.join(parts)}: the model reads them in whatever language it learned",
                "write numbers and symbols as words in the dataset's language (25 -> vinte e cinco), "
                "then prepare the dataset again",
            )
        )

    decomposed = [t for t in tokens if is_decomposed(t)]
    if decomposed:
        rows = text.rows_using(set(decomposed))
        data["decomposed"] = {"rows": rows, "tokens": [show_token(t) for t in decomposed]}
        results.append(
            CheckResult(
                NAME,
                WARN,
                f"{rows} text(s) write letters decomposed (Unicode NFD, a letter plus a combining mark), "
                f"which F5-TTS tokenizes apart from the composed letter: {_list(facts, decomposed)}",
                "normalise the texts to NFC (unicodedata.normalize('NFC', text)) and prepare the dataset again",
            )
        )

    empty_rows = [
        row
        for row, length in enumerate(text.tokens_per_row)
        if length == 0 or (length <= 3 and text.text_of(row).strip() == "")
    ]
    if empty_rows:
        data["empty"] = {"rows": len(empty_rows), "first_rows": empty_rows[:20]}
        where = facts.audio_path(empty_rows[0]) or f"row {empty_rows[0]}"
        results.append(
            CheckResult(
                NAME,
                WARN,
                f"{len(empty_rows)} clip(s) have an empty text (the first: {where}): the model learns "
                f"speech from no text",
                "give those clips their transcript or remove them from metadata.csv, then prepare again",
            )
        )

    too_long = []
    for row, (length, seconds) in enumerate(zip(text.tokens_per_row, facts.durations, strict=False)):
        if seconds > 0 and length / seconds > MAX_CHARS_PER_SECOND:
            too_long.append(row)
    if too_long:
        row = too_long[0]
        data["too_long"] = {"rows": len(too_long), "first_rows": too_long[:20]}
        results.append(
            CheckResult(
                NAME,
                WARN,
                f"{len(too_long)} text(s) are longer than {MAX_CHARS_PER_SECOND:g} characters per second of "
                f"their clip (the first: {text.tokens_per_row[row]} characters for {facts.durations[row]:.2f} s, "
                f"{short(text.text_of(row))}): the wrong text for the clip?",
                "check metadata.csv: each line's text must be what its audio says",
            )
        )

    if not results:
        results.append(
            CheckResult(
                NAME,
                OK,
                f"{text.rows} texts: no digits or symbols, no empty text, no decomposed letters",
            )
        )
    return results, data
