"""The preflight's decision, handed to the trainer once: a versioned JSON document. Torch-free.

`preflight run` writes `OUTPUT_DIR/preflight/handoff.json` right before it execs the trainer and passes its
path in one variable, PREFLIGHT_HANDOFF. The trainer reads that document and nothing else of the preflight's
work: the checkpoint to load (path, kind, update), the CPU plan, the mixed-precision decision, every resolved
path and the training options. It never parses `.env` again, so nothing can drift between the two.

This module is the one place that knows the schema and every PREFLIGHT_* variable name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from entrypoint import naming
from entrypoint.errors import ConfigError

SCHEMA_VERSION = 2  # 2: the guards' options (stall, DataLoader timeout, non-finite limit)
HANDOFF_FILE_NAME = "handoff.json"
HANDOFF_VARIABLE = "PREFLIGHT_HANDOFF"
CHECKPOINT_KINDS = ("training", "pretrained", "scratch")
# For a TRAINER_COMMAND of the user's own: the main facts as plain variables, derived from the document.
ENV_CHECKPOINT = "PREFLIGHT_CHECKPOINT"
ENV_CHECKPOINT_KIND = "PREFLIGHT_CHECKPOINT_KIND"
ENV_CHECKPOINT_UPDATE = "PREFLIGHT_CHECKPOINT_UPDATE"
ENV_WORKERS = "PREFLIGHT_WORKERS"
ENV_TORCH_THREADS = "PREFLIGHT_TORCH_THREADS"
ENV_REPORT = "PREFLIGHT_REPORT"
ENV_VERSION = "PREFLIGHT_VERSION"
ENV_NAMES = (
    HANDOFF_VARIABLE,
    ENV_CHECKPOINT,
    ENV_CHECKPOINT_KIND,
    ENV_CHECKPOINT_UPDATE,
    ENV_WORKERS,
    ENV_TORCH_THREADS,
    ENV_REPORT,
    ENV_VERSION,
)
_START_WITH_PREFLIGHT = "start training with `preflight run`, which validates the checkpoints and picks one"


@dataclass(frozen=True)
class TrainingOptions:
    """The settings the trainer uses, as the preflight parsed them (same names as Settings' fields)."""

    model_preset: str
    tokenizer: str
    dataset_name: str
    learning_rate: float
    batch_size: int
    batch_size_type: str
    max_samples: int
    grad_accumulation_steps: int
    max_grad_norm: float
    warmup_updates: int
    epochs: int
    max_updates: int
    save_every_updates: int
    last_every_updates: int
    keep_checkpoints: int
    backup_every_updates: int
    backup_keep: int
    logger: str
    seed: int
    stall_timeout_s: float | None
    stall_min_s: float
    dataloader_timeout_s: float
    non_finite_limit: int

    @classmethod
    def from_settings(cls, settings: Any) -> TrainingOptions:
        return cls(**{item.name: getattr(settings, item.name) for item in fields(cls)})


@dataclass(frozen=True)
class Handoff:
    """Everything the trainer needs from the preflight."""

    checkpoint: Path | None  # None: start from scratch
    checkpoint_kind: str  # "training" | "pretrained" | "scratch"
    checkpoint_update: int  # the update the run resumes at (0 for pretrained weights and scratch)
    workers: int  # DataLoader workers per training process (>= 1)
    torch_threads: int  # torch/OpenMP/MKL threads per training process
    processes: int  # training processes (one per GPU)
    mixed_precision: str  # "no" | "fp16" | "bf16": decided once, with the GPU probe
    output_dir: Path
    backup_dir: Path
    dataset_dir: Path
    log_dir: Path
    vocab_file: Path
    report: Path
    training: TrainingOptions
    preflight_version: str
    # Several machines: this machine's number and how many train together; machine 0 loads the checkpoint
    # and sends the training state to every other process (older documents: one machine).
    machine_rank: int = 0
    num_machines: int = 1
    collective_timeout_s: float = 1800.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data = {key: (str(value) if isinstance(value, Path) else value) for key, value in data.items()}
        return {"schema": SCHEMA_VERSION, **data}

    @property
    def state_dir(self) -> Path:
        """This machine's preflight folder (naming.state_dir): its run ledger and heartbeat."""
        return naming.state_dir(self.output_dir, self.machine_rank)

    def environment(self, path: Path) -> dict[str, str]:
        """The variables the trainer is exec'd with: the document's path plus plain copies of the main facts
        (for a TRAINER_COMMAND that does not read JSON) and the thread count for OpenMP/MKL."""
        threads = str(self.torch_threads)
        return {
            HANDOFF_VARIABLE: str(path),
            ENV_CHECKPOINT: "" if self.checkpoint is None else str(self.checkpoint),
            ENV_CHECKPOINT_KIND: self.checkpoint_kind,
            ENV_CHECKPOINT_UPDATE: str(self.checkpoint_update),
            ENV_WORKERS: str(self.workers),
            ENV_TORCH_THREADS: threads,
            ENV_REPORT: str(self.report),
            ENV_VERSION: self.preflight_version,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }


def handoff_path(report_dir: Path) -> Path:
    return report_dir / HANDOFF_FILE_NAME


def write_handoff(path: Path, handoff: Handoff) -> None:
    """Write the document durably (temp file, fsync, rename): the trainer never reads half of one."""
    from entrypoint.durable import replace_text

    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(handoff.to_json(), indent=2, sort_keys=True) + "\n")


def read_handoff(environ: Mapping[str, str] | None = None) -> Handoff:
    """The document named by PREFLIGHT_HANDOFF; ConfigError (exit 2) when the preflight did not start us."""
    environ = os.environ if environ is None else environ
    raw_path = environ.get(HANDOFF_VARIABLE, "").strip()
    if not raw_path:
        raise ConfigError(
            f"the trainer was started without the preflight ({HANDOFF_VARIABLE} is not set)",
            _START_WITH_PREFLIGHT,
        )
    path = Path(raw_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{HANDOFF_VARIABLE}={raw_path} does not exist", _START_WITH_PREFLIGHT) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{path} cannot be read: {error}", _START_WITH_PREFLIGHT) from None
    return parse_handoff(data, path)


def parse_handoff(data: Any, path: Path | str = "handoff") -> Handoff:
    """Check and convert the JSON form; every problem is a ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object", _START_WITH_PREFLIGHT)
    if data.get("schema") != SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has schema {data.get('schema')!r}, this trainer reads schema {SCHEMA_VERSION}",
            "run the preflight and the trainer from the same image",
        )
    reader = _Reader(data, str(path))
    training_data = reader.value("training", dict)
    training_reader = _Reader(training_data, f"{path} training")
    training = TrainingOptions(
        **{
            item.name: _training_value(training_reader, item.name, str(item.type))
            for item in fields(TrainingOptions)
        }
    )
    kind = reader.value("checkpoint_kind", str)
    if kind not in CHECKPOINT_KINDS:
        raise ConfigError(f"{path}: checkpoint_kind {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}")
    checkpoint = reader.path("checkpoint", optional=True)
    if (kind == "scratch") != (checkpoint is None):
        raise ConfigError(f"{path}: checkpoint_kind {kind} does not fit checkpoint {checkpoint}")
    return Handoff(
        checkpoint=checkpoint,
        checkpoint_kind=kind,
        checkpoint_update=reader.count("checkpoint_update", minimum=0),
        workers=reader.count("workers", minimum=1),
        torch_threads=reader.count("torch_threads", minimum=1),
        processes=reader.count("processes", minimum=1),
        mixed_precision=reader.choice("mixed_precision", ("no", "fp16", "bf16")),
        output_dir=reader.path("output_dir"),
        backup_dir=reader.path("backup_dir"),
        dataset_dir=reader.path("dataset_dir"),
        log_dir=reader.path("log_dir"),
        vocab_file=reader.path("vocab_file"),
        report=reader.path("report"),
        training=training,
        preflight_version=reader.value("preflight_version", str),
        **_machines(reader, data),
    )


def _machines(reader: _Reader, data: Mapping[str, Any]) -> dict[str, Any]:
    if "num_machines" not in data:
        return {}
    machines = {
        "machine_rank": reader.count("machine_rank", minimum=0),
        "num_machines": reader.count("num_machines", minimum=1),
        "collective_timeout_s": reader.value("collective_timeout_s", float),
    }
    if machines["machine_rank"] >= machines["num_machines"]:
        raise ConfigError(f"{reader.where}: machine_rank must be below num_machines")
    return machines


_TYPES: dict[Any, type] = {"str": str, "int": int, "float": float, str: str, int: int, float: float}
_OPTIONAL = " | None"


def _training_value(reader: _Reader, key: str, annotation: str) -> Any:
    if annotation.endswith(_OPTIONAL):
        if reader.value_or_none(key) is None:
            return None
        annotation = annotation[: -len(_OPTIONAL)]
    return reader.value(key, _TYPES[annotation])


class _Reader:
    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self._data = data
        self._where = where

    @property
    def where(self) -> str:
        return self._where

    def value(self, key: str, kind: type) -> Any:
        if key not in self._data:
            raise ConfigError(f"{self._where}: {key} is missing", _START_WITH_PREFLIGHT)
        value = self._data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"{self._where}: {key} is not a {kind.__name__}: {value!r}")
        return value

    def value_or_none(self, key: str) -> Any:
        if key not in self._data:
            raise ConfigError(f"{self._where}: {key} is missing", _START_WITH_PREFLIGHT)
        return self._data[key]

    def count(self, key: str, *, minimum: int) -> int:
        value = self.value(key, int)
        if value < minimum:
            raise ConfigError(f"{self._where}: {key}={value} must be >= {minimum}")
        return int(value)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.value(key, str)
        if value not in allowed:
            raise ConfigError(f"{self._where}: {key} {value!r} is not one of {', '.join(allowed)}")
        return str(value)

    def path(self, key: str, *, optional: bool = False) -> Any:
        if optional and self._data.get(key) is None:
            return None
        value = Path(self.value(key, str))
        if not value.is_absolute():
            raise ConfigError(f"{self._where}: {key} {value} is not an absolute path")
        return value
