"""A .safetensors file: 8-byte header length, JSON header, tensors packed back to back to the end of the file.

The checks are the ones the safetensors loader itself makes (so a file passing here loads there), done on
the header alone; the deep level streams the file through SHA-256 when a `<file>.sha256` sidecar exists.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from entrypoint.checkpoints.crc import RangeReader

# The safetensors library refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000
# Bits per element (F4 packs two per byte).
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
CHUNK_BYTES = 8 * 1024 * 1024


class SafetensorsDamage(Exception):
    def __init__(self, cause: str, *, truncated: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.truncated = truncated


@dataclass(frozen=True)
class SafeTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets relative to the end of the header
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: int
    tensors: dict[str, SafeTensor]
    metadata: dict[str, str]


def looks_like_safetensors(head: bytes) -> bool:
    """First bytes are a plausible header length followed by the start of a JSON object."""
    if len(head) < 9:
        return False
    n = struct.unpack_from("<Q", head)[0]
    return 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{"


def _tensor(name: str, entry: object) -> SafeTensor:
    if not isinstance(entry, dict):
        raise SafetensorsDamage(f"safetensors header entry {name} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise SafetensorsDamage(f"tensor {name} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise SafetensorsDamage(f"tensor {name} has a bad shape")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise SafetensorsDamage(f"tensor {name} has bad data offsets")
    numel = 1
    for s in shape:
        numel *= s
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise SafetensorsDamage(
            f"tensor {name}: {offsets[1] - offsets[0]} bytes for {dtype} {shape} (needs {bits / 8:g})"
        )
    return SafeTensor(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_header(f: BinaryIO, file_size: int) -> SafetensorsHeader:
    """Parse and check the header: JSON, dtypes, sizes, offsets contiguous and covering the file exactly."""
    if file_size < 8:
        raise SafetensorsDamage("safetensors file shorter than its 8-byte header length", truncated=True)
    f.seek(0)
    n = struct.unpack("<Q", f.read(8))[0]
    if n > MAX_HEADER_BYTES:
        raise SafetensorsDamage(f"safetensors header length {n} is not plausible")
    if 8 + n > file_size:
        raise SafetensorsDamage("safetensors header cut short", truncated=True)
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsDamage("safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise SafetensorsDamage("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsDamage("safetensors __metadata__ is not an object")
    tensors = {name: _tensor(name, entry) for name, entry in header.items()}
    expected = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != expected:
            what = "overlaps another tensor" if t.begin < expected else "leaves a gap before it"
            raise SafetensorsDamage(f"tensor {t.name} {what} (header offsets do not tile the data)")
        expected = t.end
    data_bytes = file_size - 8 - n
    if expected != data_bytes:
        if expected > data_bytes:
            raise SafetensorsDamage(
                f"tensor data cut short: header needs {expected} bytes, file holds {data_bytes}",
                truncated=True,
            )
        raise SafetensorsDamage(f"{data_bytes - expected} bytes of unexpected data after the last tensor")
    return SafetensorsHeader(n, tensors, {str(k): str(v) for k, v in metadata.items()})


def sidecar_digest(path: Path) -> str | None:
    """The SHA-256 recorded in `<file>.sha256` (bare hex or `sha256sum` output), None without a sidecar."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    digest = text.split()[0].lower() if text else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise SafetensorsDamage(f"{sidecar.name} does not hold a SHA-256 digest")
    return digest


def sha256_of(f: BinaryIO, file_size: int, progress: Callable[[int, int], None] | None = None) -> str:
    """SHA-256 of the whole file in constant memory, read into one reused buffer as the kernel reads ahead.

    One stream cannot be hashed on several cores; the read-ahead keeps the disk busy while a chunk is hashed
    (hashlib releases the GIL on large buffers).
    """
    digest = hashlib.sha256()
    reader = RangeReader(f.fileno(), CHUNK_BYTES)
    done = 0
    try:
        while True:
            view = reader.read(done, CHUNK_BYTES)
            if not view:
                break
            digest.update(view)
            done += len(view)
            if progress is not None:
                progress(done, file_size)
    finally:
        reader.close()
    return digest.hexdigest()
