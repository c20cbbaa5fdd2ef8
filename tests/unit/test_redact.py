from __future__ import annotations

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
    shown = redact.environment(env)
    assert shown["WANDB_API_KEY"] == MASK and shown["SEED"] == "666"
