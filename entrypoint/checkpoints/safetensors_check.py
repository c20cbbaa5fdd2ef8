"""A .safetensors file: 8-byte header length, JSON header, tensors packed back to back to the end of the file.

The checks are the ones the safetensors loader itself makes (so a file passing here loads there), done on
the header alone; the deep level streams the file through SHA-256 when a `<file>.sha256` sidecar exists.

The loader parses the header with serde_json into typed fields: sizes and offsets are unsigned 64-bit
integers (not booleans, floats or negative numbers), `__metadata__` maps strings to strings, a number out
of the double range, a lone surrogate escape or nesting past 127 levels is invalid JSON. Python's json
module accepts all of those (and raises RecursionError or ValueError on some), so the header is screened
first (nesting, number of values) and parsed with hooks that keep the loader's rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from entrypoint.checkpoints.crc import RangeReader
from entrypoint.checkpoints.regular_file import NotRegularFile, open_regular

# The safetensors library refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000
# serde_json's recursion limit: the loader refuses a header nested deeper than this.
MAX_JSON_DEPTH = 127
# JSON values (objects, arrays, scalars) in the header: about 7 per tensor, so room for 140,000 tensors
# (an F5-TTS checkpoint has about 500); memory of the parsed header stays under a few hundred MB.
MAX_HEADER_VALUES = 1_000_000
MAX_U64 = 2**64 - 1
# A `sha256sum` line for one file; only the first word is used.
MAX_SIDECAR_BYTES = 64 * 1024
# Causes quote tensor names from the file: never more than this many characters of one.
MAX_QUOTED = 80
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
    # The loader's JSON parser skips leading whitespace, so a header may start with some.
    return 2 <= n <= MAX_HEADER_BYTES and head[8 : 8 + n].lstrip(b" \t\r\n")[:1] == b"{"


def quoted(text: str) -> str:
    """A name from the file, short and printable whatever it holds."""
    if len(text) > MAX_QUOTED:
        text = text[:MAX_QUOTED] + "..."
    return text if text.isprintable() else ascii(text)[1:-1]


class _Object(dict[str, Any]):
    """A JSON object that remembers which of its keys appeared more than once (the last one wins)."""

    duplicates: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice: set[str] = set()
        for key, _value in pairs:
            (twice if key in seen else seen).add(key)
        obj.duplicates = frozenset(twice)
    return obj


class _Number:
    """A JSON number the loader reads as a size only if it is an unsigned 64-bit integer: this one is not."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _Number:
    if len(text) > 20 or text.startswith("-"):  # u64 has at most 20 digits; "-0" is a float to serde
        if len(text) > 300 and math.isinf(float(text)):
            raise ValueError("number out of range")
        return _Number(text)
    value = int(text)
    return value if value <= MAX_U64 else _Number(text)


def _parse_float(text: str) -> _Number:
    if math.isinf(float(text)):
        raise ValueError("number out of range")
    return _Number(text)


def _parse_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_U64


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _screen(raw: bytes) -> None:
    """Nesting depth and number of values, counted on the bytes before anything is parsed."""
    skeleton = _STRING.sub(b'""', raw)
    values = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if values > MAX_HEADER_VALUES:
        raise SafetensorsDamage(f"safetensors header too large: more than {MAX_HEADER_VALUES:,} values")
    brackets = skeleton.translate(None, _NOT_BRACKETS).replace(b"{", b"[").replace(b"}", b"]")
    for _level in range(MAX_JSON_DEPTH):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return  # empty, or unbalanced: the parser says which
        brackets = shorter
    if brackets:
        raise SafetensorsDamage(f"safetensors header nested too deep (more than {MAX_JSON_DEPTH} levels)")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_header_json(raw: bytes) -> dict[str, Any]:
    """The header as the loader's JSON parser reads it; SafetensorsDamage where that parser would refuse."""
    _screen(raw)
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise SafetensorsDamage("safetensors header is not valid JSON") from exc
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(header):
        raise SafetensorsDamage("safetensors header is not valid JSON (a lone surrogate escape)")
    if not isinstance(header, dict):
        raise SafetensorsDamage("safetensors header is not a JSON object")
    return header


def _tensor(name: str, entry: object) -> SafeTensor:
    shown = quoted(name)
    if not isinstance(entry, dict):
        raise SafetensorsDamage(f"safetensors header entry {shown} is not an object")
    twice = getattr(entry, "duplicates", frozenset()) & {"dtype", "shape", "data_offsets"}
    if twice:
        raise SafetensorsDamage(f"tensor {shown} lists {sorted(twice)[0]} twice")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        what = quoted(dtype) if isinstance(dtype, str) else type(dtype).__name__
        raise SafetensorsDamage(f"tensor {shown} has unknown dtype {what!r}")
    if not (isinstance(shape, list) and all(_is_u64(s) for s in shape)):
        raise SafetensorsDamage(f"tensor {shown} has a bad shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
        raise SafetensorsDamage(f"tensor {shown} has bad data offsets")
    if offsets[0] > offsets[1]:
        raise SafetensorsDamage(f"tensor {shown} has bad data offsets")
    # As the loader: the element count and the bit count in 64-bit arithmetic, refused on overflow.
    numel = 1
    for s in shape:
        numel *= s
        if numel > MAX_U64:
            raise SafetensorsDamage(f"tensor {shown}: shape too large (its element count overflows)")
    bits = numel * DTYPE_BITS[dtype]
    if bits > MAX_U64:
        raise SafetensorsDamage(f"tensor {shown}: shape too large (its size overflows)")
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        shape_text = "[" + ", ".join(map(str, shape)) + "]"
        raise SafetensorsDamage(
            f"tensor {shown}: {offsets[1] - offsets[0]} bytes for {dtype} {shape_text} (needs {bits / 8:g})"
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
    header = parse_header_json(raw)
    if "__metadata__" in getattr(header, "duplicates", ()):
        raise SafetensorsDamage("safetensors header lists __metadata__ twice")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsDamage("safetensors __metadata__ is not a map of strings to strings")
    tensors = {name: _tensor(name, entry) for name, entry in header.items()}
    expected = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != expected:
            what = "overlaps another tensor" if t.begin < expected else "leaves a gap before it"
            raise SafetensorsDamage(f"tensor {quoted(t.name)} {what} (header offsets do not tile the data)")
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
        # Opened as checkpoints are: a FIFO or device of that name never blocks or feeds endless data.
        with open_regular(sidecar) as f:
            text = f.read(MAX_SIDECAR_BYTES).decode("utf-8", errors="replace").strip()
    except NotRegularFile:
        raise SafetensorsDamage(f"{quoted(sidecar.name)} is not a regular file") from None
    except OSError:
        return None
    digest = text.split()[0].lower() if text else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise SafetensorsDamage(f"{quoted(sidecar.name)} does not hold a SHA-256 digest")
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
