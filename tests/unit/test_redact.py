from __future__ import annotations

import random

import pytest

from entrypoint.redact import MASK, Redactor, is_secret_name, secret_values


@pytest.mark.parametrize(
    "name", ["WANDB_API_KEY", "HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET", "DB_PASSWORD", "my_api_key"]
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["DATALOADER_WORKERS", "KEYBOARD", "TOKENIZER", "OUTPUT_DIR", "MONKEY"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_redactor_masks_values_everywhere() -> None:
    env = {"WANDB_API_KEY": "abcd1234secret", "HF_TOKEN": "hf_xyzxyz", "SEED": "666"}
    redact = Redactor(secret_values(env))
    text = "argv --key abcd1234secret and hf_xyzxyz; seed 666"
    assert redact(text) == f"argv --key {MASK} and {MASK}; seed 666"


PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----"
)
JSON_CREDENTIAL = '{\n  "type": "service_account",\n  "private_key_id": "9f8e7d6c5b4a"\n}'


def _secret_lines() -> list[str]:
    return [line for secret in (PEM, JSON_CREDENTIAL) for line in secret.splitlines() if len(line) > 8]


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_cut_anywhere_is_masked_as_a_whole_text_would_be(seed: int) -> None:
    redact = Redactor(
        secret_values({"SA_KEY": PEM, "GCP_CREDENTIALS": JSON_CREDENTIAL, "HF_TOKEN": "hf_abc"})
    )
    text = f"loading {PEM}\nthen {JSON_CREDENTIAL} and hf_abc, hf_ab, h\n" * 3 + "tail -----BEGIN"
    data = text.encode()
    generator = random.Random(seed)
    stream = redact.byte_stream()
    shown = b""
    start = 0
    while start < len(data):
        end = start + generator.randint(1, 80)
        piece = stream.feed(data[start:end])
        # Nothing passed on may hold a line of a secret, whatever comes next.
        assert not any(line.encode() in piece for line in _secret_lines())
        shown += piece
        start = end
    shown += stream.finish()
    assert shown.decode() == redact(text)
    assert shown.count(MASK.encode()) == 3 * 3
    assert shown.endswith(b"hf_ab, h\ntail -----BEGIN")  # prefixes of a secret are held, then passed on


def test_what_is_held_back_is_bounded_by_the_longest_secret() -> None:
    stream = Redactor(["aaaaaaaaaa"]).text_stream()
    assert stream.feed("x" + "a" * 9) == "x"  # could still become the secret
    assert stream.feed("a" * 25) == MASK * 3  # 34 a's: three secrets, then 4 that could begin a fourth
    assert stream.finish() == "aaaa"


def test_without_secrets_nothing_is_held() -> None:
    stream = Redactor([]).byte_stream()
    assert stream.feed(b"-----BEGIN") == b"-----BEGIN" and stream.finish() == b""
