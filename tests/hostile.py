"""Hostile and odd checkpoint files, built byte by byte, and a validator run that cannot take pytest down.

Each builder returns bytes (or writes a file) reproducing one way a checkpoint or a file next to it can
attack the parsers: a pickle whose dict key is nested a million deep, one whose key is a tuple shared with
itself 60 times over, megabytes of MARK opcodes, a zip bomb, a tensor shape of 2,040-bit integers, JSON
headers nested 100,000 deep or holding a 5,000-digit number, names that are lone surrogates.

`validate_isolated` runs `validate_file` in a child process under an address-space limit and a timeout,
so a crash (SIGSEGV), a hang or an out-of-memory shows up as a failed assertion with its reason.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# --- pickles ----------------------------------------------------------------------------------------------

PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
EMPTY_DICT = b"}"
EMPTY_TUPLE = b")"
NONE = b"N"
TUPLE = b"t"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
SETITEM = b"s"
SETITEMS = b"u"
REDUCE = b"R"
BINPERSID = b"Q"
NEWFALSE = b"\x89"


def unicode(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def binint(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def long1(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def binput(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def binget(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def dict_pickle(*items: tuple[bytes, bytes]) -> bytes:
    """A protocol-2 pickle of one dict from (key opcodes, value opcodes) pairs."""
    body = b"".join(key + value + SETITEM for key, value in items)
    return PROTO2 + EMPTY_DICT + body + STOP


def deep_tuple_key_pickle(depth: int = 1_000_000) -> bytes:
    """{((((None,),),)...): 1} nested `depth` deep: hash() of that key recurses in C until SIGSEGV."""
    return dict_pickle((NONE + TUPLE1 * depth, binint(1)))


def shared_tuple_key_pickle(doublings: int = 60) -> bytes:
    """{t: 1} with t_k = (t_{k-1}, t_{k-1}) through the memo: ~700 bytes, hash() walks 2^60 leaves."""
    key = NONE + b"".join(binput(k) + binget(k) + TUPLE2 for k in range(doublings))
    return dict_pickle((key, binint(1)))


def mark_flood_pickle(megabytes: int) -> bytes:
    """Megabytes of MARK opcodes: each one costs the naive stack machine a fresh list."""
    return PROTO2 + MARK * (megabytes << 20) + STOP


def tensor_pickle(shape: list[int], stride: list[int], *, key: str = "0", numel: int = 1) -> bytes:
    """{"ema_model_state_dict": {"w": <float tensor on storage data/<key>>}} as torch.save writes it."""
    storage = (
        MARK
        + unicode("storage")
        + global_("torch", "FloatStorage")
        + unicode(key)
        + unicode("cpu")
        + binint(numel)
        + TUPLE
        + BINPERSID
    )
    sizes = MARK + b"".join(long1(s) for s in shape) + TUPLE
    strides = MARK + b"".join(long1(s) for s in stride) + TUPLE
    hooks = global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    tensor = (
        global_("torch._utils", "_rebuild_tensor_v2")
        + MARK
        + storage
        + binint(0)
        + sizes
        + strides
        + NEWFALSE
        + hooks
        + TUPLE
        + REDUCE
    )
    weights = EMPTY_DICT + unicode("w") + tensor + SETITEM
    return dict_pickle((unicode("ema_model_state_dict"), weights))


# --- zip archives -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawMember:
    name: str
    data: bytes  # as stored in the archive (compressed when method is 8)
    method: int = 0
    size: int | None = None  # the uncompressed size to record; len(data) when None
    crc: int | None = None  # the CRC32 to record; computed from data when stored, 0 otherwise


def write_zip(path: Path, members: list[RawMember]) -> Path:
    """A plain zip archive whose central directory records exactly what the members say, true or not."""
    out = bytearray()
    central = bytearray()
    for m in members:
        name = m.name.encode()
        size = len(m.data) if m.size is None else m.size
        crc = m.crc if m.crc is not None else (zlib.crc32(m.data) if m.method == 0 else 0)
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, m.method, 0, 0x21, crc, len(m.data), size, len(name), 0
        )
        out += name + m.data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            m.method,
            0,
            0x21,
            crc,
            len(m.data),
            size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def torch_like_zip(path: Path, pickle: bytes, *, extra: list[RawMember] | None = None) -> Path:
    """data.pkl plus the records torch.save writes, under one archive folder named after the file."""
    folder = path.stem
    return write_zip(
        path,
        [
            RawMember(f"{folder}/data.pkl", pickle),
            RawMember(f"{folder}/byteorder", b"little"),
            *(extra or []),
            RawMember(f"{folder}/version", b"3\n"),
        ],
    )


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A raw deflate stream of `inflated_bytes` zeros (about 1/1000 of that), built in a fraction of a second.

    One 64 MiB block of zeros is compressed with a full flush (history reset, byte aligned), so the same
    compressed bytes can be repeated; an empty final block ends the stream.
    """
    block = 64 << 20
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = squeezer.compress(bytes(block)) + squeezer.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15)
    return piece * max(1, inflated_bytes // block) + final.compress(b"") + final.flush()


# --- safetensors ------------------------------------------------------------------------------------------


def safetensors_bytes(header_json: str | bytes, data: bytes = b"") -> bytes:
    raw = header_json.encode("utf-8", "surrogatepass") if isinstance(header_json, str) else header_json
    return struct.pack("<Q", len(raw)) + raw + data


def one_tensor_header(name: str = "w", **overrides: object) -> str:
    """`{"<name>": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}` with fields replaced as raw JSON."""
    fields = {"dtype": '"F32"', "shape": "[2]", "data_offsets": "[0, 8]"}
    fields.update({k: str(v) for k, v in overrides.items()})
    body = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    return f'{{"{name}": {{{body}}}}}'


# --- running the validator where it cannot hurt the test process ------------------------------------------

_RUNNER = textwrap.dedent(
    """
    import json, resource, sys, time

    def peak_rss_mb():
        # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across exec.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    deep = sys.argv[2] == "deep"
    from entrypoint.checkpoints.validate import validate_file
    for path in sys.argv[3:]:
        start = time.perf_counter()
        verdict = validate_file(path, deep=deep)
        print(json.dumps({
            "path": path, "valid": verdict.valid, "cause": verdict.cause,
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        }, ensure_ascii=True), flush=True)
    """
)


@dataclass(frozen=True)
class IsolatedRun:
    verdicts: dict[str, dict[str, object]]  # by path
    returncode: int | None  # None: killed at the timeout
    stderr: str

    def failure(self) -> str | None:
        """Why the run did not give a verdict for every file, in words; None when it did."""
        if self.returncode is None:
            return f"timed out (hang); verdicts so far: {list(self.verdicts)}; {self.stderr[-500:]}"
        if self.returncode != 0:
            how = f"killed by signal {-self.returncode}" if self.returncode < 0 else f"exit {self.returncode}"
            return f"crashed ({how}): {self.stderr[-1500:]}"
        return None


def validate_isolated(
    paths: list[Path], *, deep: bool = False, memory_bytes: int = 1 << 30, timeout: float = 60
) -> IsolatedRun:
    """validate_file on each path in a child process limited to `memory_bytes` of address space."""
    command = [
        sys.executable,
        "-c",
        _RUNNER,
        str(memory_bytes),
        "deep" if deep else "quick",
        *map(str, paths),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        err = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        return IsolatedRun(_parse(out), None, err)
    return IsolatedRun(_parse(proc.stdout), proc.returncode, proc.stderr)


def _parse(stdout: str) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            found[row["path"]] = row
    return found
