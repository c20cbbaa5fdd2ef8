"""F5-TTS's stock selection rule, re-implemented (tests/integration/test_f5_rule_real.py checks it against F5-TTS)."""

from __future__ import annotations

import os
from pathlib import Path

from entrypoint.checkpoints.f5_rule import f5_choice, f5_choice_in


def test_empty_listing_starts_fresh() -> None:
    assert f5_choice([]).starts_fresh
    assert f5_choice(["notes.txt", "model_last.pt.corrupted", "samples"]).starts_fresh


def test_model_last_wins_whenever_the_name_exists() -> None:
    choice = f5_choice(["model_900.pt", "pretrained_base.pt", "model_last.pt"])
    assert (choice.name, choice.rule) == ("model_last.pt", "last")


def test_largest_number_of_joined_digits() -> None:
    choice = f5_choice(["model_900.pt", "model_1000.pt", "model_50.safetensors"])
    assert choice.name == "model_1000.pt"
    # all digits of the name are joined: model_v2_5.pt reads as 25, beating model_9.pt
    assert f5_choice(["model_9.pt", "model_v2_5.pt"]).name == "model_v2_5.pt"


def test_numbered_beats_pretrained() -> None:
    assert f5_choice(["pretrained_model_1200000.pt", "model_0.pt"]).name == "model_0.pt"


def test_equal_numbers_depend_on_listing_order() -> None:
    first = f5_choice(["model_5.pt", "model_5.safetensors"])
    second = f5_choice(["model_5.safetensors", "model_5.pt"])
    assert first.name == "model_5.safetensors" and first.ambiguous == ("model_5.pt",)
    assert second.name == "model_5.pt" and second.ambiguous == ("model_5.safetensors",)


def test_first_pretrained_in_listing_order_and_ambiguity() -> None:
    choice = f5_choice(["pretrained_b.pt", "pretrained_a.safetensors"])
    assert choice.name == "pretrained_b.pt"
    assert choice.rule == "pretrained"
    assert choice.ambiguous == ("pretrained_a.safetensors",)


def test_names_that_crash_f5() -> None:
    no_digits = f5_choice(["model_best.pt", "model_10.pt"])
    assert no_digits.name is None and no_digits.rule == "error" and "model_best.pt" in no_digits.error
    stray = f5_choice(["weights.pt"])
    assert stray.name is None and stray.rule == "error" and "weights.pt" in stray.error


def test_other_endings_are_ignored() -> None:
    assert f5_choice(["model_99.pth", "model_5.pt"]).name == "model_5.pt"
    assert f5_choice([".model_last.pt.partial-12-ab12cd34", "model_3.pt"]).name == "model_3.pt"


def test_folder_uses_listing_order(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    assert f5_choice_in(folder).starts_fresh  # a missing folder: nothing to load
    folder.mkdir()
    for name in ("pretrained_a.pt", "pretrained_b.pt"):
        (folder / name).write_bytes(b"x")
    choice = f5_choice_in(folder)
    assert choice.name == next(n for n in os.listdir(folder) if n.startswith("pretrained_"))
    assert len(choice.ambiguous) == 1
    (folder / "model_last.pt").mkdir()  # even a directory with that name is what F5-TTS would load
    assert f5_choice_in(folder).name == "model_last.pt"
