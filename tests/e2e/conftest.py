"""Fixtures of the end-to-end training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer_data import make_tiny_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real prepared tiny dataset of synthetic clips, made once per test session."""
    return make_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny-dataset")
