"""`preflight vocab extend` end to end: a pt-BR dataset on a pretrained checkpoint whose vocabulary lacks
`ã`, `ç` and `õ` fails the preflight; the extended vocabulary and checkpoint pass F5-TTS-style validation,
leave the originals untouched, and really train through `preflight run`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.checkpoints.validate import Expectation, validate_file
from entrypoint.naming import REPORT_DIR_NAME
from entrypoint.vocab import vocabulary_from_text
from tests.ckpt_factory import make_pretrained_checkpoint
from tests.readiness_data import PT_BR, make_prepared_dataset, vocab_without
from tests.trainer_data import REPO_ROOT, load_checkpoint, run_training, tiny_settings, write_settings

pytest.importorskip("f5_tts")
pytestmark = [pytest.mark.slow, pytest.mark.trainer]
EMBED = "transformer.text_embed.text_embed.weight"
MISSING = "ãçõ"


@pytest.fixture(scope="module")
def ptbr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips = [(1.0 + 0.1 * i, PT_BR[i % len(PT_BR)]) for i in range(6)]
    return make_prepared_dataset(tmp_path_factory.getbasetemp() / "vocab-extend-ptbr", clips)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preflight(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_") and k != "ENV_FILE"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "entrypoint", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_extended_checkpoint_is_valid_and_trains(tmp_path: Path, ptbr: Path, fmt: str) -> None:
    import torch

    pretrained_dir = tmp_path / "pretrained"
    pretrained_dir.mkdir()
    old_vocab = vocab_without(ptbr / "vocab.txt", MISSING, pretrained_dir / "vocab.txt")
    old_size = len(vocabulary_from_text(old_vocab.read_text(encoding="utf-8")))
    pretrained = make_pretrained_checkpoint(pretrained_dir / f"model_1200.{fmt}", fmt, "tiny", old_size)
    originals = {path: sha256(path) for path in (old_vocab, pretrained)}
    values = tiny_settings(
        ptbr,
        tmp_path,
        max_updates=2,
        pretrained_checkpoint=pretrained,
        vocab_file=old_vocab,
        allow_scratch="false",
    )
    env_file = write_settings(tmp_path, values)

    refused = preflight("check", "--env-file", str(env_file))
    assert refused.returncode == 3 and "FAIL  vocabulary" in refused.stdout, refused.stdout + refused.stderr

    done = preflight("vocab", "extend", "--env-file", str(env_file))
    assert done.returncode == 0, done.stdout + done.stderr
    new_vocab = pretrained_dir / f"vocab_{old_size + 3}.txt"
    new_checkpoint = pretrained_dir / f"model_1200_vocab{old_size + 3}.{fmt}"
    assert (
        f"VOCAB_FILE={new_vocab}" in done.stdout and f"PRETRAINED_CHECKPOINT={new_checkpoint}" in done.stdout
    )
    assert {path: sha256(path) for path in originals} == originals  # never modified
    old_text, new_text = old_vocab.read_text(encoding="utf-8"), new_vocab.read_text(encoding="utf-8")
    assert new_text.startswith(old_text) and sorted(new_text[len(old_text) :].split()) == sorted(MISSING)
    assert validate_file(new_checkpoint, deep=True, expect=Expectation("tiny", old_size + 3)).valid

    # The new rows are what F5-TTS's expand_model_embeddings draws: randn after manual_seed(666).
    if fmt == "pt":
        old_ema = load_checkpoint(pretrained)["ema_model_state_dict"]
        new_ema = load_checkpoint(new_checkpoint)["ema_model_state_dict"]
    else:
        from safetensors.torch import load_file

        old_ema, new_ema = load_file(str(pretrained)), load_file(str(new_checkpoint))
    old_rows, new_rows = old_ema[f"ema_model.{EMBED}"], new_ema[f"ema_model.{EMBED}"]
    torch.manual_seed(666)
    assert torch.equal(new_rows[: old_size + 1], old_rows)
    assert torch.equal(new_rows[old_size + 1 :], torch.randn((3, old_rows.shape[1])))

    values.update({"VOCAB_FILE": str(new_vocab), "PRETRAINED_CHECKPOINT": str(new_checkpoint)})
    env_file = write_settings(tmp_path, values)
    trained = run_training(env_file)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    report = json.loads((Path(values["OUTPUT_DIR"]) / REPORT_DIR_NAME / "report.json").read_text())
    coverage = [c for c in report["checks"] if c["name"] == "vocabulary"]
    assert coverage[0]["status"] == "ok" and report["checkpoint"]["kind"] == "pretrained"
    last = load_checkpoint(Path(values["OUTPUT_DIR"]) / "model_last.pt")
    assert last["update"] == 2
    rows = last["model_state_dict"][EMBED]
    assert rows.shape[0] == old_size + 4
    # Training started from the extended weights: two small steps away from them, far from a fresh init.
    assert torch.allclose(rows, new_rows, atol=0.01) and not torch.equal(rows, new_rows)
