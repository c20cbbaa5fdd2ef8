"""What validating one checkpoint file concluded. Shared by validation, the cache, selection and reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Levels in the order they are checked; a verdict records the highest level it passed.
LEVELS = ("structure", "schema", "integrity", "compatibility", "load")

FORMAT_TORCH_ZIP = "torch-zip"
FORMAT_TORCH_LEGACY = "torch-legacy"
FORMAT_SAFETENSORS = "safetensors"
FORMAT_UNKNOWN = "unknown"

KIND_TRAINING = "training"  # model + EMA + optimizer + scheduler + update: resumes at `update`
KIND_PRETRAINED = "pretrained"  # EMA weights only (or no update): starts at update 0
KIND_UNKNOWN = "unknown"

# Why a file failed, as a kind: decisions (block the run, quarantine, remove) use these, never message text.
FAILURE_UNREADABLE = "unreadable"  # opening or reading failed (permissions, I/O): may be valid, never moved
FAILURE_TRUNCATED = "truncated"  # cut short (a killed copy or save)
FAILURE_FOREIGN = "foreign"  # not a checkpoint at all (zeros, another format, a legacy torch file)
FAILURE_STRUCTURE = "structure"  # the container is damaged in another way
FAILURE_SCHEMA = "schema"  # not what F5-TTS's loader needs, or a refused pickle
FAILURE_INTEGRITY = "integrity"  # a CRC32 / SHA-256 mismatch, or a read error found by the full pass
FAILURE_SHAPE = "shape"  # intact, but for another model or vocabulary: a configuration problem
FAILURE_LOAD = "load"  # torch.load / safetensors refused it
FAILURE_CHANGING = "changing"  # still being written (a copy in progress): judged once it holds still
FAILURES = (
    FAILURE_UNREADABLE,
    FAILURE_TRUNCATED,
    FAILURE_FOREIGN,
    FAILURE_STRUCTURE,
    FAILURE_SCHEMA,
    FAILURE_INTEGRITY,
    FAILURE_SHAPE,
    FAILURE_LOAD,
    FAILURE_CHANGING,
)


@dataclass(frozen=True)
class Verdict:
    path: str
    valid: bool
    cause: str  # "" when valid; otherwise plain words: "truncated: zip central directory missing ..."
    format: str
    kind: str
    update: int | None
    levels: tuple[str, ...]  # the levels that were checked and passed, e.g. ("structure", "schema")
    size: int
    details: dict[str, Any] = field(default_factory=dict)
    failure: str = ""  # one of FAILURES when not valid

    def passed(self, level: str) -> bool:
        return level in self.levels

    def to_json(self) -> dict[str, Any]:
        """The stable fields of `preflight validate --json`."""
        return {
            "path": self.path,
            "valid": self.valid,
            "cause": self.cause,
            "format": self.format,
            "kind": self.kind,
            "update": self.update,
            "levels": list(self.levels),
            "failure": self.failure,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = list(self.levels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            path=str(data["path"]),
            valid=bool(data["valid"]),
            cause=str(data["cause"]),
            format=str(data["format"]),
            kind=str(data["kind"]),
            update=None if data.get("update") is None else int(data["update"]),
            levels=tuple(data.get("levels", ())),
            size=int(data["size"]),
            details=dict(data.get("details", {})),
            failure=str(data.get("failure", "")),
        )
