"""Damage real torch.save / safetensors files every way a checkpoint gets damaged, and check each is caught.

Each fault is validated quick (structure, schema), deep (+ integrity), with the model expectation
(+ compatibility) and with load=True; the level that caught it must be the expected one, and no valid file
may be flagged. `pytest -s` prints the detection matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from entrypoint.checkpoints import torch_zip
from entrypoint.checkpoints.validate import Expectation, validate_file
from entrypoint.checkpoints.verdict import Verdict
from tests import ckpt_factory

torch = pytest.importorskip("torch", reason="the fault suite damages real torch.save files")
pytestmark = pytest.mark.trainer

VOCAB = ckpt_factory.DEFAULT_VOCAB_SIZE
EXPECT = Expectation("tiny", VOCAB)


@dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[Path, Path], Path]  # (originals dir, work dir) -> damaged file
    caught_at: frozenset[str]  # levels allowed to catch it (the first one that can see it)
    cause_has: str = ""


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("originals")
    ckpt_factory.make_training_checkpoint(root / "model_1200.pt", update=1200)
    ckpt_factory.make_training_checkpoint(root / "model_nocrc.pt", update=7, crc=False)
    ckpt_factory.make_pretrained_checkpoint(root / "pretrained_model.pt", fmt="pt")
    ckpt_factory.make_pretrained_checkpoint(root / "pretrained_model.safetensors", fmt="safetensors")
    return root


def _layout(path: Path) -> torch_zip.TorchZip:
    with open(path, "rb") as f:
        return torch_zip.read_central_directory(f, path.stat().st_size)


def _data_offset(path: Path, member: torch_zip.Member) -> int:
    with open(path, "rb") as f:
        f.seek(member.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return member.header_offset + 30 + name_len + extra_len


def _copy_cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def _flip(src: Path, dst: Path, offset: int, bit: int = 0) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 1 << bit
    dst.write_bytes(bytes(data))
    return dst


def _training(o: Path) -> Path:
    return o / "model_1200.pt"


def _truncate_at(where: Callable[[Path], int]) -> Callable[[Path, Path], Path]:
    def make(o: Path, w: Path) -> Path:
        src = _training(o)
        return _copy_cut(src, w / "model_1200.pt", where(src))

    return make


def _pkl_offset(fraction: float) -> Callable[[Path], int]:
    def where(src: Path) -> int:
        tz = _layout(src)
        member = tz.member("data.pkl")
        assert member is not None
        return _data_offset(src, member) + int(member.size * fraction)

    return where


def _tensor_offset(src: Path) -> int:
    tz = _layout(src)
    biggest = max((m for m in tz.members if "/data/" in m.name), key=lambda m: m.size)
    return _data_offset(src, biggest) + biggest.size // 2


def _flip_in_pickle(needle: bytes, bit: int = 1) -> Callable[[Path, Path], Path]:
    def make(o: Path, w: Path) -> Path:
        src = _training(o)
        tz = _layout(src)
        member = tz.member("data.pkl")
        assert member is not None
        start = _data_offset(src, member)
        data = src.read_bytes()
        at = data.index(needle, start, start + member.size) if needle else start + member.size // 2
        return _flip(src, w / "model_1200.pt", at + (len(needle) // 2 if needle else 0), bit)

    return make


def _flip_tensor(o: Path, w: Path) -> Path:
    src = _training(o)
    return _flip(src, w / "model_1200.pt", _tensor_offset(src), 3)


def _zero_filled(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    dst.write_bytes(bytes(_training(o).stat().st_size))
    return dst


def _zero_tail(o: Path, w: Path) -> Path:
    # What a crash after a delayed-allocation write leaves: the right size, the end never written.
    data = bytearray(_training(o).read_bytes())
    data[-300_000:] = bytes(300_000)
    dst = w / "model_1200.pt"
    dst.write_bytes(bytes(data))
    return dst


def _empty(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    dst.write_bytes(b"")
    return dst


def _junk_appended(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    dst.write_bytes(_training(o).read_bytes() + os.urandom(1000))
    return dst


def _png(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    dst.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(5000))
    return dst


def _zip_without_pickle(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", os.urandom(4096))
    return dst


def _legacy(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    torch.save(ckpt_factory.training_state(5), dst, _use_new_zipfile_serialization=False)
    return dst


class _RunsACommand:
    """Pickles as a call of os.system: exactly what a hostile checkpoint does."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.canary}",))


def _runs_a_command(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    state = ckpt_factory.training_state(5)
    state["scheduler_state_dict"] = {"payload": _RunsACommand(w / "CANARY")}
    torch.save(state, dst)
    return dst


def _missing_optimizer(o: Path, w: Path) -> Path:
    dst = w / "model_1200.pt"
    state = dict(ckpt_factory.training_state(5))
    del state["optimizer_state_dict"]
    torch.save(state, dst)
    return dst


def _other_vocab(o: Path, w: Path) -> Path:
    return ckpt_factory.make_training_checkpoint(w / "model_1200.pt", update=5, vocab_size=VOCAB + 7)


def _safetensors_src(o: Path) -> Path:
    return o / "pretrained_model.safetensors"


def _safetensors_lying_header(o: Path, w: Path) -> Path:
    data = _safetensors_src(o).read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8 : 8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][1] > 64)
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 4]  # claims 4 more bytes than its shape needs
    raw = json.dumps(header).encode()
    dst = w / "pretrained_model.safetensors"
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return dst


def _safetensors_truncated(o: Path, w: Path) -> Path:
    src = _safetensors_src(o)
    return _copy_cut(src, w / "pretrained_model.safetensors", src.stat().st_size * 2 // 3)


def _safetensors_flipped_with_sidecar(o: Path, w: Path) -> Path:
    src = _safetensors_src(o)
    dst = w / "pretrained_model.safetensors"
    (w / "pretrained_model.safetensors.sha256").write_text(
        f"{hashlib.sha256(src.read_bytes()).hexdigest()}  pretrained_model.safetensors\n"
    )
    return _flip(src, dst, src.stat().st_size - 1000, 5)


S, SC, IN, C = "structure", "schema", "integrity", "compatibility"
FAULTS = [
    Fault("cut to 1 byte", _truncate_at(lambda p: 1), frozenset({S}), "truncated"),
    Fault("cut to 4 KiB", _truncate_at(lambda p: 4096), frozenset({S}), "truncated"),
    Fault("cut inside data.pkl", _truncate_at(_pkl_offset(0.5)), frozenset({S}), "truncated"),
    Fault("cut at end of data.pkl", _truncate_at(_pkl_offset(1.0)), frozenset({S}), "truncated"),
    Fault("cut inside tensor data", _truncate_at(_tensor_offset), frozenset({S}), "truncated"),
    Fault("cut at 47%", _truncate_at(lambda p: p.stat().st_size * 47 // 100), frozenset({S}), "truncated"),
    Fault("cut at 90%", _truncate_at(lambda p: p.stat().st_size * 9 // 10), frozenset({S}), "truncated"),
    Fault(
        "cut at central directory",
        _truncate_at(lambda p: _layout(p).central_offset),
        frozenset({S}),
        "truncated",
    ),
    Fault(
        "cut inside central directory",
        _truncate_at(lambda p: _layout(p).central_offset + _layout(p).central_size // 2),
        frozenset({S}),
        "truncated",
    ),
    Fault(
        "cut inside end record", _truncate_at(lambda p: p.stat().st_size - 10), frozenset({S}), "truncated"
    ),
    Fault("one byte short", _truncate_at(lambda p: p.stat().st_size - 1), frozenset({S}), "truncated"),
    Fault(
        "bit flip in a data.pkl key", _flip_in_pickle(b"optimizer_state_dict"), frozenset({SC}), "missing key"
    ),
    Fault("bit flip in a data.pkl opcode", _flip_in_pickle(b"", 7), frozenset({SC, IN})),
    Fault(
        "bit flip in a tensor name", _flip_in_pickle(b"transformer.proj_out.weight"), frozenset({SC, IN, C})
    ),
    Fault("bit flip in tensor data", _flip_tensor, frozenset({IN}), "CRC mismatch in data/"),
    Fault("zero-filled", _zero_filled, frozenset({S}), "zero-filled"),
    Fault("zero-filled tail", _zero_tail, frozenset({S}), "ends in zeros"),
    Fault("empty", _empty, frozenset({S}), "empty file"),
    Fault("junk appended", _junk_appended, frozenset({S}), "unexpected data"),
    Fault("not a zip (PNG)", _png, frozenset({S}), "not a checkpoint (PNG image)"),
    Fault("zip without data.pkl", _zip_without_pickle, frozenset({S}), "without data.pkl"),
    Fault("legacy torch format", _legacy, frozenset({S}), "legacy (non-zip) torch format"),
    Fault("pickle runs os.system", _runs_a_command, frozenset({SC}), "pickle references os.system"),
    Fault("missing optimizer", _missing_optimizer, frozenset({SC}), "missing key optimizer_state_dict"),
    Fault("other vocabulary", _other_vocab, frozenset({C}), "shape mismatch for transformer.text_embed"),
    Fault("safetensors header lies", _safetensors_lying_header, frozenset({S}), "bytes for"),
    Fault("safetensors truncated", _safetensors_truncated, frozenset({S}), "truncated"),
    Fault(
        "safetensors bit flip (sidecar)",
        _safetensors_flipped_with_sidecar,
        frozenset({IN}),
        "SHA-256 mismatch",
    ),
]

VALID = [
    ("training", "model_1200.pt", "training", 1200),
    ("training, CRCs disabled", "model_nocrc.pt", "training", 7),
    ("pretrained .pt", "pretrained_model.pt", "pretrained", 0),
    ("pretrained .safetensors", "pretrained_model.safetensors", "pretrained", 0),
]

_matrix: list[tuple[str, str, str, str, str]] = []


def _first_failure(verdicts: list[Verdict]) -> tuple[str, str]:
    for v in verdicts:
        if not v.valid:
            return v.details.get("failed_level", "?"), v.cause
    return "-", ""


def _all_modes(path: Path) -> list[Verdict]:
    return [
        validate_file(path),
        validate_file(path, deep=True),
        validate_file(path, deep=True, expect=EXPECT),
        validate_file(path, deep=True, expect=EXPECT, load=True),
    ]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_caught_at_its_level(fault: Fault, originals: Path, tmp_path: Path) -> None:
    damaged = fault.make(originals, tmp_path)
    verdicts = _all_modes(damaged)
    level, cause = _first_failure(verdicts)
    quick = "BAD" if not verdicts[0].valid else "ok"
    deep = "BAD" if not verdicts[1].valid else "ok"
    _matrix.append((fault.name, quick, deep, level, cause))
    assert not verdicts[-1].valid, f"{fault.name}: not detected at any level"
    assert level in fault.caught_at, f"{fault.name}: caught at {level} ({cause}), expected {fault.caught_at}"
    assert fault.cause_has in cause
    # A fault caught at a level is reported by every later mode too (more checking never hides it).
    first = next(i for i, v in enumerate(verdicts) if not v.valid)
    assert all(not v.valid for v in verdicts[first:])
    assert not (tmp_path / "CANARY").exists(), "pickle code ran"


@pytest.mark.parametrize(("label", "name", "kind", "update"), VALID, ids=[v[0] for v in VALID])
def test_valid_file_is_never_flagged(label: str, name: str, kind: str, update: int, originals: Path) -> None:
    for verdict in _all_modes(originals / name):
        assert verdict.valid, f"{label}: flagged: {verdict.cause}"
        assert (verdict.kind, verdict.update) == (kind, update)
    full = _all_modes(originals / name)[-1]
    if name.endswith(".safetensors"):  # no checksum recorded and no sidecar: integrity is not claimed
        assert full.levels == ("structure", "schema", "compatibility", "load")
    else:
        assert full.levels == ("structure", "schema", "integrity", "compatibility", "load")
    _matrix.append((f"VALID {label}", "ok", "ok", "-", ""))


def test_the_command_never_ran_even_under_torch_weights_only(originals: Path, tmp_path: Path) -> None:
    damaged = _runs_a_command(originals, tmp_path)
    verdict = validate_file(damaged, deep=True, load=True)
    assert "os.system" in verdict.cause
    # The real loader agrees with the static scan: it refuses the file too.
    with pytest.raises(Exception, match="system"):
        torch.load(damaged, weights_only=True)
    assert not (tmp_path / "CANARY").exists()


def test_crc_disabled_file_really_has_no_crcs(originals: Path) -> None:
    verdict = validate_file(originals / "model_nocrc.pt", deep=True)
    assert verdict.details["crc_recorded"] is False
    assert verdict.details["crc_checked"] == 0 and verdict.details["crc_not_recorded"] > 0


def test_torch_itself_does_not_notice_flipped_tensor_data(originals: Path, tmp_path: Path) -> None:
    """Why the deep level exists: torch.load reads a bit-flipped file silently."""
    damaged = _flip_tensor(originals, tmp_path)
    torch.load(damaged, weights_only=True)  # no error
    assert "CRC mismatch" in validate_file(damaged, deep=True).cause


def teardown_module() -> None:
    if not _matrix:
        return
    width = max(len(row[0]) for row in _matrix)
    print(f"\n{'fault':<{width}}  quick  deep  caught at      cause")
    for name, quick, deep, level, cause in _matrix:
        print(f"{name:<{width}}  {quick:<5}  {deep:<4}  {level:<13}  {cause}")
