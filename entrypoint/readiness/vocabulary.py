"""Vocabulary coverage: every token of the dataset's text against the vocabulary the model will use.

F5-TTS's tokenizer (`list_str_to_idx`) looks each token up with `vocab_char_map.get(token, 0)`: a character
missing from the vocabulary silently becomes index 0 (the space in F5-TTS's own vocabularies), so a pt-BR
dataset on a vocabulary without `ã` trains those letters as silence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrypoint.checks.result import FAIL, OK, WARN, CheckResult
from entrypoint.readiness.dataset_facts import DatasetFacts
from entrypoint.vocab import read_vocabulary

NAME = "vocabulary"
SHOWN = 8  # missing tokens named in the one-line message
EXAMPLES = 100  # missing tokens described in the JSON data (a script on the wrong vocabulary has thousands)


def show_token(token: str) -> str:
    """A token as a user can read it, combining marks and blanks included."""
    if len(token) == 1 and (token.isspace() or _is_combining(token) or not token.isprintable()):
        return f"U+{ord(token):04X}"
    return repr(token)


def _is_combining(token: str) -> bool:
    import unicodedata

    return bool(unicodedata.combining(token))


def short(text: str, width: int = 48) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def missing_tokens(facts: DatasetFacts, vocab: dict[str, int]) -> list[str]:
    """Tokens of the dataset that are not in the vocabulary, most frequent first."""
    assert facts.text is not None
    counts = facts.text.counts
    return sorted((token for token in counts if token not in vocab), key=lambda t: (-counts[t], t))


def check_coverage(
    facts: DatasetFacts | None, vocab_path: Path, *, allow_unknown: bool, extend_hint: str
) -> tuple[CheckResult, dict[str, Any]]:
    data: dict[str, Any] = {"vocab_file": str(vocab_path), "missing": []}
    if facts is None:
        return CheckResult(NAME, WARN, "coverage not checked: the dataset could not be read"), data
    if facts.text is None:
        return CheckResult(
            NAME,
            WARN,
            f"coverage not checked: {facts.text_skipped}",
            "run `preflight check` where F5-TTS is installed (the image, or `make setup-trainer`)",
        ), data
    try:
        raw = vocab_path.read_bytes()
        vocab = read_vocabulary(vocab_path)
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return CheckResult(NAME, FAIL, f"vocabulary {vocab_path} cannot be read: {reason}"), data
    text = facts.text
    missing = missing_tokens(facts, vocab)
    data["vocab_size"] = len(vocab)
    data["tokens_in_dataset"] = len(text.counts)
    data["missing"] = [
        {
            "token": token,
            "codepoints": [f"U+{ord(c):04X}" for c in token],
            "count": text.counts[token],
            "example_row": text.first_row[token],
            "example": text.text_of(text.first_row[token]),
        }
        for token in missing[:EXAMPLES]
    ]
    data["missing_count"] = len(missing)
    if not missing:
        return CheckResult(
            NAME,
            OK,
            f"{vocab_path.name} ({len(vocab)} symbols) covers all {len(text.counts)} distinct characters "
            f"of the {text.rows} texts",
        ), data
    index0 = next((token for token, index in vocab.items() if index == 0), None)
    read_as = f"index 0 ({show_token(index0)})" if index0 is not None else "index 0"
    named = ", ".join(
        f"{show_token(t)} x{text.counts[t]} (e.g. {short(text.text_of(text.first_row[t]))})"
        for t in missing[:SHOWN]
    )
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    note = ""
    if raw and not raw.endswith(b"\n"):
        note = " (the file's last line has no newline, so F5-TTS drops that symbol's last character)"
    message = (
        f"{len(missing)} character(s) of the dataset are not in {vocab_path}{note}; F5-TTS silently reads "
        f"them as {read_as}: {named}{more}"
    )
    fix = (
        f"use a vocabulary that has them (VOCAB_FILE) with a checkpoint made for it, or extend both: "
        f"{extend_hint}; ALLOW_UNKNOWN_CHARS=true trains anyway"
    )
    return CheckResult(NAME, WARN if allow_unknown else FAIL, message, fix), data
