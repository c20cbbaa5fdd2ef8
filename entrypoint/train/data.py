"""The training dataset from DATASET_DIR, built directly (F5-TTS's load_dataset reads package-relative
paths, and its "CustomDatasetPath" branch is broken in 1.1.22)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entrypoint.errors import CheckFailed

RAW_ARROW = "raw.arrow"
DURATION_JSON = "duration.json"


def read_durations(dataset_dir: Path) -> list[float]:
    path = dataset_dir / DURATION_JSON
    try:
        durations = json.loads(path.read_text(encoding="utf-8"))["duration"]
    except FileNotFoundError:
        raise CheckFailed(
            f"{path} is missing",
            "prepare the dataset with f5_tts.train.datasets.prepare_csv_wavs into DATASET_DIR",
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckFailed(
            f"{path} is not a valid duration file: {error}", "prepare the dataset again"
        ) from None
    return [float(value) for value in durations]


def check_audio_paths(arrow: Path, audio_paths: Sequence[str]) -> None:
    """Every clip's audio file must exist: prepare_csv_wavs stores absolute paths, so a dataset prepared
    elsewhere (on the host) and mounted at another path would only fail later, inside a DataLoader worker."""
    missing = [path for path in audio_paths if not os.path.exists(path)]
    if missing:
        raise CheckFailed(
            f"{len(missing)} of {len(audio_paths)} audio files named in {arrow} do not exist "
            f"(the first: {missing[0]})",
            "prepare the dataset where it will be read: inside the container, with paths under "
            "/workspace/data/dataset, or mount the audio at the same path",
        )


def load_train_dataset(dataset_dir: Path, mel_spec_kwargs: dict[str, Any]) -> Any:
    """F5-TTS's CustomDataset over DATASET_DIR/raw.arrow with DATASET_DIR/duration.json."""
    from datasets import Dataset
    from f5_tts.model.dataset import CustomDataset

    arrow = dataset_dir / RAW_ARROW
    if not arrow.is_file():
        raise CheckFailed(
            f"{arrow} is missing",
            "prepare the dataset with f5_tts.train.datasets.prepare_csv_wavs into DATASET_DIR",
        )
    durations = read_durations(dataset_dir)
    rows = Dataset.from_file(str(arrow))
    if len(rows) != len(durations):
        raise CheckFailed(
            f"{arrow} has {len(rows)} rows but {DURATION_JSON} has {len(durations)} durations",
            "prepare the dataset again",
        )
    if len(rows) == 0:
        raise CheckFailed(f"{arrow} has no rows", "prepare a dataset with at least one clip")
    check_audio_paths(arrow, rows["audio_path"])
    return CustomDataset(rows, durations=durations, preprocessed_mel=False, **mel_spec_kwargs)
