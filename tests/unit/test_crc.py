"""The deep check's reading and hashing: fast CRC-32 with a zlib fallback, several threads with the verdict
of one ordered pass, constant memory for deflated members, and interrupts that always end the check."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest

from entrypoint.checkpoints import crc, torch_zip

REPO = Path(__file__).resolve().parents[2]
MEMBER_BYTES = 1 << 20


def _archive(path: Path, members: int = 24, *, seed: int = 0) -> Path:
    """A zip laid out as torch.save lays it out: one folder, stored members, CRCs recorded."""
    rng = __import__("random").Random(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ckpt/data.pkl", b"\x80\x02}q\x00.")
        for n in range(members):
            zf.writestr(f"ckpt/data/{n}", rng.randbytes(MEMBER_BYTES))
        zf.writestr("ckpt/version", b"3\n")
    return path


def _layout(path: Path) -> torch_zip.TorchZip:
    with open(path, "rb") as f:
        return torch_zip.read_central_directory(f, path.stat().st_size)


def _flip(path: Path, tz: torch_zip.TorchZip, short: str) -> None:
    member = tz.member(short)
    assert member is not None
    with open(path, "r+b") as f:
        f.seek(member.header_offset + 200)  # past the local header and name, inside the data
        byte = f.read(1)[0]
        f.seek(member.header_offset + 200)
        f.write(bytes([byte ^ 0x04]))


def _check(path: Path, threads: int, chunk_bytes: int | None = None) -> dict[str, int]:
    with open(path, "rb") as f:
        return torch_zip.check_crcs(f, _layout(path), threads=threads, chunk_bytes=chunk_bytes)


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_the_crc_in_use_gives_zlib_results() -> None:
    data = memoryview(bytearray(os.urandom(3 << 20)))
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(data[1000:], 12345) == zlib.crc32(data[1000:], 12345)
    assert crc.IMPLEMENTATION in ("isal", "zlib")


def test_without_isal_the_check_runs_on_zlib_with_the_same_verdicts(tmp_path: Path) -> None:
    good = _archive(tmp_path / "good.pt")
    bad = _archive(tmp_path / "bad.pt")
    _flip(bad, _layout(bad), "data/5")
    done = _python(
        """
        import sys
        sys.modules["isal"] = sys.modules["isal.isal_zlib"] = None  # as if not installed
        from pathlib import Path
        from entrypoint.checkpoints import crc, torch_zip
        print(crc.IMPLEMENTATION)
        for name in sys.argv[1:]:
            path = Path(name)
            with open(path, "rb") as f:
                tz = torch_zip.read_central_directory(f, path.stat().st_size)
                try:
                    print(torch_zip.check_crcs(f, tz, threads=2)["crc_checked"])
                except torch_zip.ZipDamage as damage:
                    print(damage.cause)
        """,
        str(good),
        str(bad),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["zlib", str(len(_layout(good).members)), "CRC mismatch in data/5"]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("chunk_bytes", [4096, 300_000, None])
def test_every_thread_count_checks_every_member(
    tmp_path: Path, threads: int, chunk_bytes: int | None
) -> None:
    path = _archive(tmp_path / "ckpt.pt")
    tz = _layout(path)
    counts = _check(path, threads, chunk_bytes)
    assert counts == {"crc_checked": len(tz.members), "crc_not_recorded": 0, "bytes_read": tz.central_offset}


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_with_several_damaged_members_the_first_in_file_order_is_named(tmp_path: Path, threads: int) -> None:
    # Damage in the first thread's part and in the last one's: one ordered pass would name data/3.
    path = _archive(tmp_path / "ckpt.pt")
    tz = _layout(path)
    for short in ("data/21", "data/3", "data/22"):
        _flip(path, tz, short)
    with pytest.raises(torch_zip.ZipDamage, match=r"CRC mismatch in data/3$"):
        _check(path, threads)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_a_member_damaged_late_in_the_file_is_found_by_any_thread_count(tmp_path: Path, threads: int) -> None:
    path = _archive(tmp_path / "ckpt.pt")
    tz = _layout(path)
    _flip(path, tz, "data/23")
    with pytest.raises(torch_zip.ZipDamage, match=r"CRC mismatch in data/23$"):
        _check(path, threads)


def test_parts_are_contiguous_balanced_and_cover_every_item() -> None:
    weights = [5, 1, 1, 1, 1, 1, 10, 1, 1, 1]
    for parts in range(1, 12):
        split = crc._split(weights, lambda w: w, parts)
        assert [i for part in split for i in part] == list(range(len(weights)))
        assert all(len(part) > 0 for part in split)
        assert len(split) <= parts
    assert crc._split([1] * 10, lambda w: w, 2) == [range(0, 5), range(5, 10)]


# --- deflated members: constant memory ---------------------------------------------------------------------

HONEST_BYTES = 512 << 20
BOMB_BYTES = 256 << 20
PEAK_LIMIT_MB = 120  # the interpreter plus a few chunks; inflating either member at once needs 256+ MB


def _central_entry(data: bytes | bytearray, name: str) -> int:
    pos = data.rfind(b"PK\x05\x06")
    pos = struct.unpack_from("<I", data, pos + 16)[0]
    while data[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len].decode() == name:
            return pos
        pos += 46 + name_len + extra_len + comment_len
    raise LookupError(name)


@pytest.fixture(scope="module")
def deflated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deflated")
    zeros = bytes(16 << 20)
    honest = root / "honest.pt"
    with zipfile.ZipFile(honest, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("ckpt/data.pkl", b"\x80\x02}q\x00.")
        with zf.open("ckpt/data/0", "w", force_zip64=True) as member:
            for _ in range(HONEST_BYTES // len(zeros)):
                member.write(zeros)
    # A bomb: a member that claims 100 bytes and inflates to 256 MB.
    bomb = root / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("ckpt/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("ckpt/data/0", bytes(BOMB_BYTES))
    data = bytearray(bomb.read_bytes())
    entry = _central_entry(data, "ckpt/data/0")
    local = struct.unpack_from("<I", data, entry + 42)[0]
    struct.pack_into("<I", data, entry + 24, 100)
    struct.pack_into("<I", data, local + 22, 100)
    bomb.write_bytes(data)
    return {"honest": honest, "bomb": bomb}


def test_deflated_members_are_checked_in_constant_memory(deflated: dict[str, Path]) -> None:
    done = _python(
        """
        import sys
        from pathlib import Path
        from entrypoint.checkpoints import torch_zip
        for name in sys.argv[1:]:
            path = Path(name)
            with open(path, "rb") as f:
                tz = torch_zip.read_central_directory(f, path.stat().st_size)
                try:
                    print(torch_zip.check_crcs(f, tz)["crc_checked"])
                except torch_zip.ZipDamage as damage:
                    print(damage.cause)
        peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(peak_kb // 1024)
        """,
        str(deflated["honest"]),
        str(deflated["bomb"]),
    )
    assert done.returncode == 0, done.stderr
    honest, bomb, peak_mb = done.stdout.split("\n")[:3]
    assert honest == "2"
    assert bomb == "size mismatch in data/0"
    assert int(peak_mb) < PEAK_LIMIT_MB


def test_a_member_that_is_not_deflate_data_is_damage_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "garbled.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ckpt/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("ckpt/data/0", os.urandom(100_000))
    tz = _layout(path)
    member = tz.member("data/0")
    assert member is not None
    with open(path, "r+b") as f:  # the deflate stream's first bytes: an invalid block type
        f.seek(member.header_offset + 30 + len(member.name) + 0)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(torch_zip.ZipDamage, match="data/0"):
        _check(path, 1)


# --- interrupts ------------------------------------------------------------------------------------------

STRESS_TRIES = 150


@pytest.mark.parametrize("threads", [1, 2])
def test_an_interrupt_at_any_moment_ends_the_check_and_its_threads(tmp_path: Path, threads: int) -> None:
    """SIGINT at random moments of many checks (small chunks: many reads and hand-overs to land in)."""
    path = _archive(tmp_path / "ckpt.pt", members=40)
    done = _python(
        """
        import random, signal, sys, threading, time
        from pathlib import Path
        from entrypoint.checkpoints import crc, torch_zip
        path, tries, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
        with open(path, "rb") as f:
            tz = torch_zip.read_central_directory(f, path.stat().st_size)
        main = threading.main_thread().ident
        def check():
            with open(path, "rb") as f:
                torch_zip.check_crcs(f, tz, chunk_bytes=16384, threads=threads)
        start = time.perf_counter(); check(); whole = time.perf_counter() - start
        rng = random.Random(7)
        interrupted = 0
        for _ in range(tries):
            timer = threading.Timer(rng.uniform(0, whole), signal.pthread_kill, (main, signal.SIGINT))
            try:
                timer.start()
                check()
            except KeyboardInterrupt:
                interrupted += 1
            while True:  # the signal may still be on its way: let it land here
                try:
                    timer.join()
                    time.sleep(0.001)
                    break
                except KeyboardInterrupt:
                    pass
            deadline = time.monotonic() + crc.JOIN_BUDGET_S
            while any(t.name.startswith("crc-") for t in threading.enumerate()):
                assert time.monotonic() < deadline, "a hashing thread outlived its check"
                time.sleep(0.01)
        print(interrupted)
        """,
        str(path),
        str(STRESS_TRIES),
        str(threads),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= STRESS_TRIES // 2
