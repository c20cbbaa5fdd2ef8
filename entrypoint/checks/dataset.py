"""The prepared dataset and the vocabulary are where the settings say, before the model is built."""

from __future__ import annotations

from pathlib import Path

from entrypoint.checks.result import FAIL, OK, CheckResult, human_bytes
from entrypoint.vocab import vocabulary_size

REQUIRED_FILES = ("raw.arrow", "duration.json")
PREPARE_FIX = (
    "prepare it with `python -m f5_tts.train.datasets.prepare_csv_wavs --pretrain metadata.csv DATASET_DIR` "
    "where training will read it (README: Your own data and model) and point DATASET_DIR at it"
)


def check_dataset(dataset_dir: Path, vocab_file: Path) -> tuple[CheckResult, int | None]:
    """The result and the vocabulary size (None when it could not be read)."""
    if dataset_dir.exists() and not dataset_dir.is_dir():
        return CheckResult(
            "dataset", FAIL, f"DATASET_DIR {dataset_dir} is a file, not a folder", PREPARE_FIX
        ), None
    if not dataset_dir.is_dir():
        return CheckResult("dataset", FAIL, f"DATASET_DIR {dataset_dir} does not exist", PREPARE_FIX), None
    missing = [name for name in REQUIRED_FILES if not (dataset_dir / name).is_file()]
    if missing:
        return CheckResult(
            "dataset", FAIL, f"DATASET_DIR {dataset_dir} has no {' or '.join(missing)}", PREPARE_FIX
        ), None
    empty = [name for name in REQUIRED_FILES if (dataset_dir / name).stat().st_size == 0]
    if empty:
        return CheckResult(
            "dataset", FAIL, f"DATASET_DIR {dataset_dir}: {' and '.join(empty)} is empty", PREPARE_FIX
        ), None
    try:
        vocab_size = vocabulary_size(vocab_file)
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return CheckResult(
            "dataset",
            FAIL,
            f"vocabulary {vocab_file} cannot be read: {reason}",
            "set VOCAB_FILE to the vocab.txt the dataset was prepared with",
        ), None
    arrow_size = human_bytes((dataset_dir / "raw.arrow").stat().st_size)
    return CheckResult(
        "dataset", OK, f"{dataset_dir}: raw.arrow {arrow_size}, vocabulary {vocab_size} symbols"
    ), vocab_size
