"""Safetensors header checks on files written by the safetensors library itself."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrypoint.checkpoints.safetensors_check import (
    SafetensorsDamage,
    SafetensorsHeader,
    looks_like_safetensors,
    read_header,
    sha256_of,
    sidecar_digest,
)

torch = pytest.importorskip("torch", reason="files are written with safetensors.torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _write(path: Path) -> Path:
    safetensors_torch.save_file(
        {
            "ema_model.transformer.proj_out.weight": torch.ones(100, 64),
            "half": torch.zeros(3, 5, dtype=torch.float16),
            "flag": torch.tensor(True),
            "empty": torch.zeros(0, 4),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path


def _rewrite_header(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = src.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return dst


def _read(path: Path) -> SafetensorsHeader:
    with open(path, "rb") as f:
        return read_header(f, path.stat().st_size)


def test_header_of_a_real_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors")
    assert looks_like_safetensors(path.read_bytes()[:16])
    header = _read(path)
    weight = header.tensors["ema_model.transformer.proj_out.weight"]
    assert (weight.dtype, weight.shape, weight.end - weight.begin) == ("F32", (100, 64), 25600)
    assert header.tensors["half"].shape == (3, 5) and header.tensors["flag"].shape == ()
    assert header.metadata == {"format": "pt"}


def test_offsets_that_lie_about_a_size(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.safetensors")

    def grow(header: dict[str, Any]) -> None:
        header["half"]["data_offsets"][1] += 2

    with pytest.raises(SafetensorsDamage, match="tensor half: 32 bytes for F16"):
        _read(_rewrite_header(src, tmp_path / "b.safetensors", grow))


def test_offsets_that_overlap(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.safetensors")

    def overlap(header: dict[str, Any]) -> None:
        begin, end = header["half"]["data_offsets"]
        header["half"]["data_offsets"] = [begin - 2, end - 2]

    with pytest.raises(SafetensorsDamage, match="offsets do not tile"):
        _read(_rewrite_header(src, tmp_path / "b.safetensors", overlap))


def test_unknown_dtype(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.safetensors")

    def retype(header: dict[str, Any]) -> None:
        header["half"]["dtype"] = "F17"

    with pytest.raises(SafetensorsDamage, match="unknown dtype 'F17'"):
        _read(_rewrite_header(src, tmp_path / "b.safetensors", retype))


def test_truncated_and_extended(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.safetensors")
    data = src.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[:-1])
    with pytest.raises(SafetensorsDamage) as caught:
        _read(short)
    assert caught.value.truncated
    long = tmp_path / "long.safetensors"
    long.write_bytes(data + b"\0")
    with pytest.raises(SafetensorsDamage, match="1 bytes of unexpected data"):
        _read(long)
    cut_header = tmp_path / "cut.safetensors"
    cut_header.write_bytes(data[:20])
    with pytest.raises(SafetensorsDamage, match="header cut short"):
        _read(cut_header)


def test_header_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"{abc")
    with pytest.raises(SafetensorsDamage, match="not valid JSON"):
        _read(path)


def test_the_real_loader_agrees_with_a_header_that_passes(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.safetensors")
    _read(path)
    loaded = safetensors_torch.load_file(str(path))
    assert set(loaded) == set(_read(path).tensors)


def test_sidecar_digest_formats(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.safetensors")
    assert sidecar_digest(path) is None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "a.safetensors.sha256").write_text(f"{digest.upper()}  a.safetensors\n")
    assert sidecar_digest(path) == digest
    with open(path, "rb") as f:
        assert sha256_of(f, path.stat().st_size) == digest
    (tmp_path / "a.safetensors.sha256").write_text("not a digest\n")
    with pytest.raises(SafetensorsDamage, match="does not hold a SHA-256"):
        sidecar_digest(path)


def test_sidecar_that_is_a_fifo_is_damage_not_a_wait(tmp_path: Path) -> None:
    import os

    path = _write(tmp_path / "a.safetensors")
    os.mkfifo(tmp_path / "a.safetensors.sha256")
    with pytest.raises(SafetensorsDamage, match="is not a regular file"):
        sidecar_digest(path)


def test_header_json_the_loader_refuses(tmp_path: Path) -> None:
    from entrypoint.checkpoints.safetensors_check import parse_header_json

    for raw, cause in [
        (b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", "nested too deep"),
        (b'{"a": [' + b"1," * 1_100_000 + b"1]}", "more than 1,000,000 values"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"\\udc80": 1}', "lone surrogate"),
    ]:
        with pytest.raises(SafetensorsDamage, match=cause):
            parse_header_json(raw)
    # Brackets and escapes inside strings are text, not structure; a surrogate pair is a real character.
    assert parse_header_json(b'{"[[[": "\\"{{", "e": "\\ud83d\\ude00"}') == {"[[[": '"{{', "e": "\U0001f600"}


def test_leading_whitespace_before_the_header_object_is_accepted_as_the_loader_does(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.safetensors")
    data = src.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    padded = b"  " + data[8 : 8 + n]
    path = tmp_path / "b.safetensors"
    path.write_bytes(struct.pack("<Q", len(padded)) + padded + data[8 + n :])
    assert looks_like_safetensors(path.read_bytes()[:4096])
    assert set(_read(path).tensors) == set(safetensors_torch.load_file(str(path)))
