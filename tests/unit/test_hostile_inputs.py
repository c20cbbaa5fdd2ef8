"""Hostile files against the validator: a verdict for each, in bounded time and memory, never a crash or hang.

Every case was a crash, a hang or an out-of-memory before the parsers got their budgets. Each runs in a
child process under a 1 GiB address-space limit and a timeout (tests/hostile.py), so a SIGSEGV, a hang or
a MemoryError fails the test instead of taking pytest down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.checkpoints.validate import MAX_CAUSE_CHARS, validate_file
from tests import hostile
from tests.hostile import RawMember

# A child running the torch-free validator: Python, the package and one file's worth of parsing.
MEMORY_LIMIT = 1 << 30


def _verdict(path: Path, *, deep: bool = False, timeout: float = 30) -> dict[str, object]:
    run = hostile.validate_isolated([path], deep=deep, memory_bytes=MEMORY_LIMIT, timeout=timeout)
    assert run.failure() is None, run.failure()
    row = run.verdicts[str(path)]
    cause = str(row["cause"])
    assert not row["valid"], "a hostile file passed validation"
    assert cause and len(cause) <= MAX_CAUSE_CHARS and "\n" not in cause
    cause.encode("utf-8")  # printable: no lone surrogate reaches a terminal or a report
    return row


# 1, 2: dict keys whose hash recurses past the C stack or walks 2^60 leaves


def test_dict_key_nested_a_million_deep_is_refused_not_a_segfault(tmp_path: Path) -> None:
    path = hostile.torch_like_zip(tmp_path / "deep_key.pt", hostile.deep_tuple_key_pickle(1_000_000))
    row = _verdict(path)
    assert "nested too deep" in str(row["cause"])


def test_dict_key_of_a_tuple_shared_60_times_is_refused_not_hashed(tmp_path: Path) -> None:
    pickle = hostile.shared_tuple_key_pickle(60)
    assert len(pickle) < 1000
    path = hostile.torch_like_zip(tmp_path / "shared_key.pt", pickle)
    row = _verdict(path, timeout=20)
    assert "dict key that is a container" in str(row["cause"])


# 3: memory amplification of the scan


@pytest.mark.parametrize(
    ("opcodes", "cause"),
    [
        (hostile.MARK, "nested too deep"),
        (hostile.EMPTY_DICT, "containers"),
        (hostile.NONE, "opcodes"),
    ],
    ids=["marks", "dicts", "nones"],
)
def test_floods_of_cheap_opcodes_cost_bounded_memory(tmp_path: Path, opcodes: bytes, cause: str) -> None:
    # 48 MB of one-byte opcodes: the unbounded stack machine needed 64 to 80 bytes of RAM for each.
    pickle = hostile.PROTO2 + opcodes * (48 << 20) + hostile.STOP
    path = hostile.torch_like_zip(tmp_path / "flood.pt", pickle)
    row = _verdict(path, timeout=60)
    assert cause in str(row["cause"])
    assert float(row["peak_rss_mb"]) < 300, row  # the file's 48 MB pickle, read once, and bounded parse state


# 4: zip bomb in data.pkl


@pytest.mark.parametrize("claimed", ["100", "compressed size"])
def test_deflated_pickle_that_inflates_past_its_recorded_size_stops_there(
    tmp_path: Path, claimed: str
) -> None:
    bomb = hostile.deflate_bomb(3 << 30)  # 3 GiB of zeros in about 3 MB
    size = 100 if claimed == "100" else len(bomb)
    path = hostile.write_zip(
        tmp_path / "bomb.pt",
        [RawMember("bomb/data.pkl", bomb, method=8, size=size), RawMember("bomb/version", b"3\n")],
    )
    row = _verdict(path)
    if claimed == "100":  # refused from the central directory alone: deflate never grows data 30,000-fold
        assert "stored in more bytes than it holds" in str(row["cause"])
    else:
        assert f"inflates past the {size} bytes" in str(row["cause"])
    assert float(row["peak_rss_mb"]) < 100, row


def test_deflated_pickle_claiming_more_than_the_budget_is_refused_unread(tmp_path: Path) -> None:
    bomb = hostile.deflate_bomb(1 << 30)
    path = hostile.write_zip(
        tmp_path / "big.pt",
        [RawMember("big/data.pkl", bomb, method=8, size=1 << 30), RawMember("big/version", b"3\n")],
    )
    row = _verdict(path)
    assert "too large for a state dict's pickle" in str(row["cause"])


# 5: shapes of huge integers


@pytest.mark.parametrize(("dims", "cause"), [(4000, "4000 dimensions"), (8, "sizes must be int64")])
def test_shape_of_2040_bit_integers_is_refused_fast_with_a_short_cause(
    tmp_path: Path, dims: int, cause: str
) -> None:
    huge = 2**2039 - 1  # a LONG1 opcode holds at most 255 bytes
    pickle = hostile.tensor_pickle([huge] * dims, [huge] * dims)
    path = hostile.torch_like_zip(tmp_path / "shape.pt", pickle, extra=[RawMember("shape/data/0", b"\0" * 4)])
    row = _verdict(path, timeout=20)
    assert cause in str(row["cause"])
    assert float(row["seconds"]) < 5


# 6: tracebacks instead of verdicts


def test_safetensors_header_nested_100000_deep(tmp_path: Path) -> None:
    header = hostile.one_tensor_header(x="[" * 100_000 + "]" * 100_000)
    path = tmp_path / "deep.safetensors"
    path.write_bytes(hostile.safetensors_bytes(header, b"\0" * 8))
    assert "nested too deep" in str(_verdict(path)["cause"])


def test_safetensors_header_with_a_5000_digit_integer(tmp_path: Path) -> None:
    path = tmp_path / "digits.safetensors"
    path.write_bytes(hostile.safetensors_bytes(hostile.one_tensor_header(shape=f"[{'9' * 5000}]"), b"\0" * 8))
    assert "not valid JSON" in str(_verdict(path)["cause"])


def test_safetensors_tensor_named_by_a_lone_surrogate(tmp_path: Path) -> None:
    path = tmp_path / "surrogate.safetensors"
    path.write_bytes(hostile.safetensors_bytes(hostile.one_tensor_header("\\udc80"), b"\0" * 8))
    assert "lone surrogate" in str(_verdict(path)["cause"])


def test_pickle_storage_key_with_a_lone_surrogate_gives_a_printable_cause(tmp_path: Path) -> None:
    pickle = hostile.tensor_pickle([1], [1], key="\udc80" + "k" * 5000)
    path = hostile.torch_like_zip(tmp_path / "key.pt", pickle)
    row = _verdict(path)
    assert "missing tensor data data/\\udc80kkk" in str(row["cause"])
    # The command line prints it and exits 1 with a verdict, not a UnicodeEncodeError traceback.
    env = {**os.environ, "PYTHONPATH": str(hostile.REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "entrypoint", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=hostile.REPO,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "\\udc80" in proc.stdout + proc.stderr


# 7: a FIFO where a sidecar (or the checkpoint) is expected


def _valid_safetensors(path: Path) -> Path:
    path.write_bytes(hostile.safetensors_bytes(hostile.one_tensor_header(), b"\0" * 8))
    return path


def test_fifo_sidecar_does_not_block_the_deep_check(tmp_path: Path) -> None:
    path = _valid_safetensors(tmp_path / "model.safetensors")
    os.mkfifo(tmp_path / "model.safetensors.sha256")
    row = _verdict(path, deep=True, timeout=20)
    assert "model.safetensors.sha256 is not a regular file" in str(row["cause"])


def test_fifo_named_like_a_checkpoint_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model_100.pt")
    row = _verdict(tmp_path / "model_100.pt", timeout=20)
    assert row["cause"] == "not a regular file"


# 8: what the safetensors loader refuses is refused here too


@pytest.mark.parametrize(
    "header",
    [
        hostile.one_tensor_header(shape="[true, 2]"),
        (hostile.one_tensor_header(dtype='"U8"', shape="[1]", data_offsets="[false, true]"), b"\0"),
        hostile.one_tensor_header(shape="[2.0]"),
        hostile.one_tensor_header(data_offsets="[-0, 8]"),
        '{"__metadata__": {"format": 1}, ' + hostile.one_tensor_header()[1:],
        '{"__metadata__": false, ' + hostile.one_tensor_header()[1:],
        '{"__metadata__": {"a": "b"}, "__metadata__": {"a": "c"}, ' + hostile.one_tensor_header()[1:],
        '{"w": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
        hostile.one_tensor_header(x="NaN"),
        hostile.one_tensor_header(x="1e999"),
        (hostile.one_tensor_header(shape="[4294967296, 4294967296, 0]", data_offsets="[0, 0]"), b""),
    ],
    ids=[
        "bool-shape",
        "bool-offsets",
        "float-shape",
        "negative-zero",
        "int-metadata",
        "false-metadata",
        "metadata-twice",
        "field-twice",
        "nan",
        "number-out-of-range",
        "overflow-before-zero",
    ],
)
def test_safetensors_headers_the_loader_refuses_are_invalid(
    tmp_path: Path, header: str | tuple[str, bytes]
) -> None:
    safe_open = pytest.importorskip("safetensors").safe_open
    pytest.importorskip("numpy")
    text, data = header if isinstance(header, tuple) else (header, b"\0" * 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(hostile.safetensors_bytes(text, data))
    with pytest.raises(Exception, match="deserializing header"):
        safe_open(str(path), framework="numpy")
    verdict = validate_file(path)
    assert not verdict.valid and verdict.levels == ()
