"""Options for the whole suite (pytest only reads pytest_addoption from the root conftest)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-full-image",
        action="store_true",
        default=False,
        help="build the full trainer image (torch, f5-tts) and train a few updates in it on the CPU (slow)",
    )
