"""Validate one checkpoint file, level by level, without torch and without running any pickle code.

Levels (see verdict.LEVELS), each only after the previous one passed:
- structure: the container is whole. Torch zip: end record, zip64, central directory, members inside the
  file, the torch members (data.pkl, version). Safetensors: header length, JSON header, offsets tiling the
  file exactly. Reads the end of the file and the central directory only.
- schema: what F5-TTS's `Trainer.load_checkpoint` needs is there. data.pkl is parsed statically (every
  global checked against torch's weights_only allow-list); each storage's recorded size matches its member
  and every tensor fits its storage (free: the sizes are in the central directory).
- integrity (deep): every member's CRC32, streamed once on up to `threads` threads with the verdict of one
  pass in file order (see crc.py); CRC 0 means "not recorded"
  (`torch.serialization.set_crc32_options(False)`) and is never a failure. Safetensors: SHA-256 against a
  `<file>.sha256` sidecar when there is one.
- compatibility (expect): tensor shapes against the configured preset and vocabulary.
- load (load=True): `torch.load(weights_only=True, mmap=True)` when torch is importable.

What F5-TTS's trainer accepts (f5_tts/model/trainer.py `load_checkpoint`, 1.1.22), hence what is valid here:
- `ema_model_state_dict` is always read: without it the load fails, so a .pt holding `model_state_dict` only
  (an inference export) is invalid for training.
- with `update` (or the older `step`) it also reads `model_state_dict`, `optimizer_state_dict` and
  `scheduler_state_dict`: all five keys make a "training" checkpoint that resumes at `update`.
- without `update`/`step` only the EMA weights are used and training starts at 0: a "pretrained" file, with
  or without a `model_state_dict` or optimizer next to it. A .safetensors is always "pretrained".
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from entrypoint.checkpoints import torch_zip
from entrypoint.checkpoints.compat import check_compatibility
from entrypoint.checkpoints.crc import IMPLEMENTATION as CRC32_IMPLEMENTATION
from entrypoint.checkpoints.pickle_scan import PickleRefused, PickleSummary, TensorRef, quoted, scan_pickle
from entrypoint.checkpoints.regular_file import NotRegularFile, open_regular
from entrypoint.checkpoints.safetensors_check import (
    SafetensorsDamage,
    looks_like_safetensors,
    read_header,
    sha256_of,
    sidecar_digest,
)
from entrypoint.checkpoints.verdict import (
    FAILURE_FOREIGN,
    FAILURE_INTEGRITY,
    FAILURE_LOAD,
    FAILURE_SCHEMA,
    FAILURE_SHAPE,
    FAILURE_STRUCTURE,
    FAILURE_TRUNCATED,
    FAILURE_UNREADABLE,
    FORMAT_SAFETENSORS,
    FORMAT_TORCH_LEGACY,
    FORMAT_TORCH_ZIP,
    FORMAT_UNKNOWN,
    KIND_PRETRAINED,
    KIND_TRAINING,
    KIND_UNKNOWN,
    Verdict,
)

TRAINING_KEYS = (
    "model_state_dict",
    "ema_model_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "update",
)
WEIGHT_KEYS = ("model_state_dict", "ema_model_state_dict")
HEAD_BYTES = 4096
TAIL_BYTES = 65536
# A cause is one line of a terminal or report; the formats quote file-supplied names at 80 characters.
MAX_CAUSE_CHARS = 400


@dataclass(frozen=True)
class Expectation:
    """What the configured model needs; None instead of an Expectation skips the compatibility level."""

    preset: str  # key of entrypoint.presets.PRESETS
    vocab_size: int | None


@dataclass(frozen=True)
class _Request:
    """What validate_file was asked for beyond the quick levels, handed down to the format's checks."""

    deep: bool
    expect: Expectation | None
    reference_size: int | None
    progress: Callable[[int, int], None] | None
    threads: int = 1


_FAILURE_OF_LEVEL = {
    "structure": FAILURE_STRUCTURE,
    "schema": FAILURE_SCHEMA,
    "integrity": FAILURE_INTEGRITY,
    "compatibility": FAILURE_SHAPE,
    "load": FAILURE_LOAD,
}


class _Failed(Exception):
    def __init__(self, level: str, cause: str, failure: str = "") -> None:
        super().__init__(cause)
        self.level = level
        self.cause = cause
        self.failure = failure or _FAILURE_OF_LEVEL[level]


@dataclass
class _Progress:
    """What is known so far; a failure keeps the levels passed before it."""

    path: Path
    size: int
    format: str = FORMAT_UNKNOWN
    kind: str = KIND_UNKNOWN
    update: int | None = None
    levels: tuple[str, ...] = ()
    details: dict[str, Any] | None = None

    def passed(self, level: str) -> None:
        self.levels = (*self.levels, level)

    def verdict(self, valid: bool, cause: str = "", failure: str = "") -> Verdict:
        return Verdict(
            path=str(self.path),
            valid=valid,
            cause=cause,
            format=self.format,
            kind=self.kind,
            update=self.update,
            levels=self.levels,
            size=self.size,
            details=dict(self.details or {}),
            failure=failure,
        )


def validate_file(
    path: Path,
    *,
    deep: bool = False,
    expect: Expectation | None = None,
    load: bool = False,
    reference_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
) -> Verdict:
    """Check one file. Never raises for a bad or unreadable file: the Verdict says what is wrong.

    `threads`: how many CPUs the deep check may keep busy (the container's usable CPUs).
    """
    path = Path(path)
    state = _Progress(path, 0, details={})
    try:
        try:
            f = open_regular(path)  # never blocks: a FIFO or device is refused, not waited on
        except FileNotFoundError:
            raise _Failed("structure", "file not found") from None
        except NotRegularFile:
            raise _Failed("structure", "not a regular file") from None
        with f:
            state.size = os.fstat(f.fileno()).st_size
            if state.size == 0:
                raise _Failed("structure", "empty file")
            _check(f, state, _Request(deep, expect, reference_size, progress, max(1, threads)))
        if load:
            _load_with_torch(path, state)
        return state.verdict(True)
    except _Failed as failure:
        assert state.details is not None
        state.details["failed_level"] = failure.level
        return state.verdict(False, printable_cause(failure.cause), failure.failure)
    except OSError as exc:
        state.details = {**(state.details or {}), "failed_level": "structure"}
        cause = printable_cause(f"cannot read the file: {exc.strerror or exc}")
        return state.verdict(False, cause, FAILURE_UNREADABLE)


def printable_cause(cause: str) -> str:
    """One short line that any terminal, log or report encoding can take: names from a file are escaped."""
    if len(cause) > MAX_CAUSE_CHARS:
        cause = cause[: MAX_CAUSE_CHARS - 3] + "..."
    return cause if cause.isprintable() else ascii(cause)[1:-1]


def _check(f: BinaryIO, state: _Progress, request: _Request) -> None:
    head = _read(f, 0, HEAD_BYTES)
    is_safetensors_name = state.path.suffix == ".safetensors"
    if is_zip(head):
        state.format = FORMAT_TORCH_ZIP
        if is_safetensors_name:
            raise _Failed(
                "structure", "a torch zip file named .safetensors (F5-TTS picks the loader by name)"
            )
        _check_torch_zip(f, state, request)
    elif looks_like_safetensors(head):
        state.format = FORMAT_SAFETENSORS
        if not is_safetensors_name:
            raise _Failed(
                "structure", "safetensors data in a file not named .safetensors (F5-TTS would torch.load it)"
            )
        _check_safetensors(f, state, request)
    else:
        raise _Failed("structure", _foreign_cause(f, head, state, request.reference_size), FAILURE_FOREIGN)


def _read(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length) or b""


def _size_note(size: int, reference_size: int | None) -> str:
    if reference_size:
        return f"{human_size(size)} where siblings are {human_size(reference_size)}"
    return human_size(size)


def _foreign_cause(f: BinaryIO, head: bytes, state: _Progress, reference_size: int | None) -> str:
    if all_zero(head) and all_zero(_read(f, max(0, state.size - TAIL_BYTES), TAIL_BYTES)):
        return f"zero-filled: zeros at start and end ({_size_note(state.size, reference_size)})"
    if is_legacy_torch(head) or is_tar(head):
        state.format = FORMAT_TORCH_LEGACY
        return "legacy (non-zip) torch format: cannot be checked safely; re-save it with a current torch"
    if is_pickle(head):
        return "not a checkpoint (a bare pickle, not written by torch.save)"
    what = describe_foreign(head)
    if what:
        return f"not a checkpoint ({what})"
    return "not a checkpoint (unrecognised content)"


def _check_compatibility(
    weights: Mapping[str, Mapping[str, tuple[int, ...]]], expect: Expectation, state: _Progress
) -> None:
    cause = check_compatibility(weights, expect.preset, expect.vocab_size)
    if cause:
        raise _Failed("compatibility", cause)
    state.passed("compatibility")


# --- torch zip ---------------------------------------------------------------------------------------------


def _check_torch_zip(f: BinaryIO, state: _Progress, request: _Request) -> None:
    assert state.details is not None
    try:
        tz = torch_zip.read_central_directory(f, state.size)
    except torch_zip.ZipDamage as damage:
        raise _zip_failure("structure", f, state, damage, request.reference_size) from None
    pickle_member = tz.member("data.pkl")
    if pickle_member is None:
        raise _Failed("structure", "zip without data.pkl: not a torch checkpoint")
    if tz.member("version") is None and tz.member(".data/version") is None:
        raise _Failed("structure", "zip without a version record: not a torch checkpoint")
    try:
        pickled = torch_zip.read_member(f, tz, pickle_member)
    except torch_zip.ZipDamage as damage:
        raise _zip_failure("structure", f, state, damage, request.reference_size) from None
    state.details.update(members=len(tz.members), crc_recorded=tz.crc_recorded)
    state.passed("structure")

    try:
        summary = scan_pickle(pickled)
    except PickleRefused as refused:
        raise _Failed("schema", refused.cause) from None
    _check_schema(summary, state)
    _check_storages(summary, tz)
    state.details["tensors"] = len(summary.tensors)
    state.passed("schema")

    if request.deep:
        try:
            counts = torch_zip.check_crcs(f, tz, progress=request.progress, threads=request.threads)
        except torch_zip.ZipDamage as damage:
            raise _zip_failure("integrity", f, state, damage, request.reference_size) from None
        except OSError as exc:  # a bad sector shows up only when every byte is read
            raise _Failed("integrity", f"read error: {exc.strerror or exc}") from None
        state.details.update(counts, crc_threads=request.threads, crc32=CRC32_IMPLEMENTATION)
        state.passed("integrity")

    if request.expect is not None:
        weights = {
            key: _shapes(summary.top[key]) for key in WEIGHT_KEYS if isinstance(summary.top.get(key), dict)
        }
        _check_compatibility(weights, request.expect, state)


def _zip_failure(
    level: str, f: BinaryIO, state: _Progress, damage: Exception, reference_size: int | None
) -> _Failed:
    truncated = getattr(damage, "truncated", False)
    return _Failed(
        level, _zip_cause(f, state, damage, reference_size), FAILURE_TRUNCATED if truncated else ""
    )


def _zip_cause(f: BinaryIO, state: _Progress, damage: Exception, reference_size: int | None) -> str:
    cause = getattr(damage, "cause", str(damage))
    if not getattr(damage, "truncated", False):
        return cause
    if all_zero(_read(f, max(0, state.size - TAIL_BYTES), TAIL_BYTES)):
        return f"truncated: {cause}; the file ends in zeros ({_size_note(state.size, reference_size)})"
    return f"truncated: {cause} ({_size_note(state.size, reference_size)})"


def _check_schema(summary: PickleSummary, state: _Progress) -> None:
    top = summary.top
    if not isinstance(top, dict):
        raise _Failed("schema", f"not a state dict (the file holds a {summary.top_type})")
    keys = set(top)
    # In the order F5-TTS reads them: the EMA weights first, then the rest when `update`/`step` is there.
    if "ema_model_state_dict" not in keys:
        if "model_state_dict" in keys:
            raise _Failed(
                "schema",
                "missing key ema_model_state_dict (the file holds model_state_dict only; F5-TTS's trainer "
                "loads EMA weights)",
            )
        if top and all(isinstance(v, TensorRef) for v in top.values()):
            raise _Failed(
                "schema",
                "missing key ema_model_state_dict (a bare state dict; save it as "
                "{'ema_model_state_dict': ...} or as .safetensors)",
            )
        raise _Failed("schema", "missing key ema_model_state_dict")
    if "update" in keys or "step" in keys:
        for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict"):
            if key not in keys:
                raise _Failed("schema", f"missing key {key}")
        update = top.get("update", top.get("step"))
        if isinstance(update, bool) or not isinstance(update, int) or update < 0:
            raise _Failed("schema", f"update is not a whole number ({type(update).__name__})")
        state.kind, state.update = KIND_TRAINING, update
    else:
        state.kind, state.update = KIND_PRETRAINED, 0
    for key in WEIGHT_KEYS:
        if key in keys:
            value = top[key]
            if not isinstance(value, dict) or not any(isinstance(v, TensorRef) for v in value.values()):
                raise _Failed("schema", f"{key} holds no tensors")


def _check_storages(summary: PickleSummary, tz: torch_zip.TorchZip) -> None:
    """Each storage's recorded size equals its member's; every tensor view fits inside its storage."""
    for key, storage in summary.storages.items():
        member = tz.member(f"data/{key}")
        if member is None:
            raise _Failed("schema", f"missing tensor data data/{quoted(key)} (the pickle refers to it)")
        if storage.itemsize and member.size != storage.nbytes:
            raise _Failed(
                "schema",
                f"size mismatch in data/{quoted(key)}: {member.size} bytes, the pickle says {storage.nbytes}",
            )
    for tensor in summary.tensors:
        needed = tensor.elements_needed()
        if needed > tensor.storage.numel:
            raise _Failed(
                "schema",
                f"a tensor of shape {list(tensor.shape)} reaches past the end of data/{quoted(tensor.storage.key)}",
            )


def _shapes(state_dict: Mapping[Any, Any]) -> dict[str, tuple[int, ...]]:
    return {str(k): v.shape for k, v in state_dict.items() if isinstance(v, TensorRef)}


# --- safetensors -------------------------------------------------------------------------------------------


def _check_safetensors(f: BinaryIO, state: _Progress, request: _Request) -> None:
    assert state.details is not None
    try:
        header = read_header(f, state.size)
    except SafetensorsDamage as damage:
        raise _zip_failure("structure", f, state, damage, request.reference_size) from None
    state.details["tensors"] = len(header.tensors)
    state.passed("structure")
    if not header.tensors:
        raise _Failed("schema", "safetensors file holds no tensors")
    # F5-TTS loads a .safetensors as EMA weights and starts at update 0.
    state.kind, state.update = KIND_PRETRAINED, 0
    state.passed("schema")
    if request.deep:
        try:
            recorded = sidecar_digest(state.path)
        except SafetensorsDamage as damage:
            raise _Failed("integrity", damage.cause) from None
    if request.deep and recorded is None:
        # safetensors records no checksum: without a sidecar there is nothing to compare, so the level is not
        # claimed (and the file is not read in full for nothing).
        state.details["integrity"] = f"not checked: no {state.path.name}.sha256 sidecar"
    elif request.deep:
        try:
            actual = sha256_of(f, state.size, request.progress)
        except OSError as exc:
            raise _Failed("integrity", f"read error: {exc.strerror or exc}") from None
        if actual != recorded:
            raise _Failed("integrity", f"SHA-256 mismatch with {state.path.name}.sha256")
        state.details["sha256"] = actual
        state.passed("integrity")
    if request.expect is not None:
        shapes = {name: t.shape for name, t in header.tensors.items()}
        _check_compatibility({"safetensors": shapes}, request.expect, state)


# --- load --------------------------------------------------------------------------------------------------


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _load_with_torch(path: Path, state: _Progress) -> None:
    """The real loader as the trainer calls it; skipped (not failed) where torch is not installed."""
    assert state.details is not None
    if not torch_available():
        state.details["load"] = "skipped: torch is not installed"
        return
    try:
        if state.format == FORMAT_SAFETENSORS:
            from safetensors import safe_open

            with safe_open(os.fspath(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    handle.get_tensor(name)
        else:
            import torch

            torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except Exception as exc:  # any refusal by the real loader is the verdict
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _Failed("load", f"torch.load refused it: {first_line[:200]}") from None
    state.passed("load")


# --- recognising other content ----------------------------------------------------------------------------

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
# torch's legacy serialization starts with a protocol-2 pickle of this magic number (a 10-byte LONG1).
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"%PDF", "PDF document"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"(\xb5/\xfd", "zstd archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-zip archive"),
    (b"Rar!", "RAR archive"),
    (b"\x7fELF", "executable"),
    (b"GGUF", "GGUF model (llama.cpp), not an F5-TTS checkpoint"),
    (b"\x89HDF", "HDF5 file"),
    (b"\x93NUMPY", "NumPy array file"),
    (b"RIFF", "RIFF file (WAV audio?)"),
    (b"fLaC", "FLAC audio"),
    (b"OggS", "Ogg audio"),
    (b"ID3", "MP3 audio"),
    (b"version https://git-lfs", "Git LFS pointer: fetch the real file with `git lfs pull`"),
)


def describe_foreign(head: bytes) -> str | None:
    """A plain name for a known non-checkpoint file type, else None."""
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    text = head.lstrip()[:64].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "HTML page (a failed download?)"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        return "text file"
    return None


def is_legacy_torch(head: bytes) -> bool:
    return head.startswith(LEGACY_TORCH_MAGIC)


def is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5


def is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def is_zip(head: bytes) -> bool:
    # A file cut inside the first four bytes still starts like a zip.
    return head.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)) or (0 < len(head) < 4 and ZIP_MAGIC.startswith(head))


def all_zero(data: bytes) -> bool:
    return not data.strip(b"\x00")


def human_size(n: int) -> str:
    """Decimal units, one decimal place, as file managers and `ls -h --si` show sizes."""
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "bytes":
                return "1 byte" if n == 1 else f"{n} bytes"
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} bytes"
