"""`preflight check` on real prepared datasets (F5-TTS's prepare_csv_wavs): pt-BR text with digits, NFD
text, a vocabulary missing letters, clips longer than the frame budget, all clips too long, and the
preflight without pyarrow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.readiness_data import PT_BR, make_prepared_dataset, mixed_lengths, nfd, vocab_without

pytest.importorskip("f5_tts", reason="prepare_csv_wavs makes the datasets")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ptbr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips = [(1.5 + 0.25 * i, PT_BR[i % len(PT_BR)]) for i in range(12)]
    return make_prepared_dataset(tmp_path_factory.getbasetemp() / "readiness-ptbr", clips)


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips = [(2.0, nfd(text)) for text in PT_BR]
    return make_prepared_dataset(tmp_path_factory.getbasetemp() / "readiness-nfd", clips)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.getbasetemp() / "readiness-mixed-v2", mixed_lengths())


@pytest.fixture(scope="module")
def too_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips = [(35.0, PT_BR[0]), (36.5, PT_BR[1]), (40.0, PT_BR[2])]
    return make_prepared_dataset(tmp_path_factory.getbasetemp() / "readiness-too-long", clips)


def check(
    tmp_path: Path, dataset: Path, python_prefix: str = "", **settings: str
) -> tuple[int, dict[str, Any]]:
    values = {
        "DATASET_DIR": str(dataset),
        "OUTPUT_DIR": str(tmp_path / "output"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "LOG_DIR": str(tmp_path / "logs"),
        "MODEL_PRESET": "tiny",
        "ALLOW_SCRATCH": "true",
        "WAIT_TIMEOUT_S": "0",
        "WARMUP_UPDATES": "1",
        **settings,
    }
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_") and k != "ENV_FILE"}
    env["PYTHONPATH"] = str(ROOT)
    args = ["check", "--json", "--env-file", str(env_file)]
    if python_prefix:
        command = [
            sys.executable,
            "-c",
            f"{python_prefix}\nfrom entrypoint.cli import main\nraise SystemExit(main({args!r}))",
        ]
    else:
        command = [sys.executable, "-m", "entrypoint", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def results(report: dict[str, Any], name: str) -> list[dict[str, str]]:
    return [c for c in report["checks"] if c["name"] == name]


def test_letters_missing_from_the_vocabulary_fail_with_counts_and_examples(
    tmp_path: Path, ptbr: Path
) -> None:
    vocab = vocab_without(ptbr / "vocab.txt", "ãç", tmp_path / "vocab.txt")
    code, report = check(tmp_path, ptbr, VOCAB_FILE=str(vocab))
    assert code == 3
    [coverage] = results(report, "vocabulary")
    used = Counter("".join(PT_BR[i % len(PT_BR)] for i in range(12)))
    assert coverage["status"] == "fail"
    assert f"'ã' x{used['ã']}" in coverage["message"] and f"'ç' x{used['ç']}" in coverage["message"]
    assert "A ação do coração" in coverage["message"] and "vocab extend" in coverage["fix"]
    missing = {item["token"]: item for item in report["readiness"]["vocabulary"]["missing"]}
    assert set(missing) == {"ã", "ç"} and missing["ç"]["count"] == used["ç"]
    assert "ç" in missing["ç"]["example"]

    code, report = check(tmp_path, ptbr, VOCAB_FILE=str(vocab), ALLOW_UNKNOWN_CHARS="true")
    assert code == 0 and results(report, "vocabulary")[0]["status"] == "warn"


def test_the_datasets_own_vocabulary_covers_it_and_digits_warn(tmp_path: Path, ptbr: Path) -> None:
    code, report = check(tmp_path, ptbr)
    assert code == 0
    assert results(report, "vocabulary")[0]["status"] == "ok"
    digits = [c for c in results(report, "text") if "digits" in c["message"]]
    assert len(digits) == 1 and digits[0]["status"] == "warn"
    rows_with_digits = sum(any(ch.isdigit() for ch in PT_BR[i % len(PT_BR)]) for i in range(12))
    assert digits[0]["message"].startswith(f"{rows_with_digits} text(s)") and "'2'" in digits[0]["message"]


def test_nfd_text_against_an_nfc_vocabulary(tmp_path: Path, decomposed: Path, ptbr: Path) -> None:
    code, report = check(tmp_path, decomposed, VOCAB_FILE=str(ptbr / "vocab.txt"))
    assert code == 3
    [coverage] = results(report, "vocabulary")
    assert "U+0303" in coverage["message"] and "U+0327" in coverage["message"]  # combining tilde, cedilla
    nfd_warnings = [c for c in results(report, "text") if "decomposed" in c["message"]]
    assert len(nfd_warnings) == 1 and nfd_warnings[0]["message"].startswith(f"{len(PT_BR)} text(s)")
    assert "NFC" in nfd_warnings[0]["fix"]


def test_all_clips_longer_than_the_frame_budget_fail(tmp_path: Path, too_long: Path) -> None:
    code, report = check(tmp_path, too_long, BATCH_SIZE="3200")
    assert code == 3
    [plan_result] = results(report, "batches")
    assert (
        plan_result["status"] == "fail"
        and "all 3 clips are longer than BATCH_SIZE=3200" in plan_result["message"]
    )
    longest = max(json.loads((too_long / "duration.json").read_text())["duration"])
    assert f"at least {-(-longest * 24000 // 256):.0f}" in plan_result["fix"]
    assert report["readiness"]["batch_plan"]["batches"] == 0


def test_clips_longer_than_the_budget_warn_with_the_share_dropped(tmp_path: Path, mixed: Path) -> None:
    code, report = check(tmp_path, mixed, BATCH_SIZE="400")
    assert code == 0
    plan = report["readiness"]["batch_plan"]
    durations = json.loads((mixed / "duration.json").read_text())["duration"]
    assert plan["too_long_clips"] == sum(d * 24000 / 256 > 400 for d in durations) > 0
    dropped = [c for c in results(report, "batches") if "never trained on" in c["message"]]
    assert len(dropped) == 1 and f"{plan['too_long_clips']} clips" in dropped[0]["message"]
    assert plan["dropped_share"] > 0.05


def test_a_warm_up_longer_than_the_run_warns(tmp_path: Path, ptbr: Path) -> None:
    code, report = check(
        tmp_path, ptbr, BATCH_SIZE_TYPE="sample", BATCH_SIZE="4", EPOCHS="2", WARMUP_UPDATES="5"
    )
    plan = report["readiness"]["batch_plan"]
    assert code == 0 and plan["run_updates"] == 6  # 12 clips / 4 per batch = 3 updates, 2 epochs
    assert any("warm-up" in c["message"] and c["status"] == "warn" for c in results(report, "batches"))
    code, report = check(
        tmp_path, ptbr, BATCH_SIZE_TYPE="sample", BATCH_SIZE="4", EPOCHS="2", WARMUP_UPDATES="3"
    )
    assert not any("warm-up" in c["message"] and c["status"] == "warn" for c in results(report, "batches"))


def test_without_pyarrow_the_text_checks_say_they_were_skipped(tmp_path: Path, ptbr: Path) -> None:
    block = "import sys\nsys.modules['pyarrow'] = None\nsys.modules['numpy'] = None"
    vocab = vocab_without(ptbr / "vocab.txt", "ãç", tmp_path / "vocab.txt")
    code, report = check(tmp_path, ptbr, python_prefix=block, VOCAB_FILE=str(vocab))
    assert code == 0  # the letters cannot be seen without pyarrow: a warning, not a false pass
    [coverage] = results(report, "vocabulary")
    assert coverage["status"] == "warn" and "pyarrow" in coverage["message"]
    assert report["readiness"]["batch_plan"]["clips"] == 12  # duration.json needs nothing
