"""The zip layer on real torch.save files: central directory, members, local headers, streamed CRC32."""

from __future__ import annotations

import itertools
import zipfile
import zlib
from pathlib import Path

import pytest

from entrypoint.checkpoints import torch_zip

torch = pytest.importorskip("torch", reason="real torch.save files are the test input")


def _save(path: Path, crc: bool = True) -> Path:
    state = {
        "w": torch.arange(300_000, dtype=torch.float32),  # 1.2 MB: spans several small chunks
        "b": torch.ones(3, dtype=torch.bfloat16),
        "n": 7,
    }
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(crc)
    try:
        torch.save(state, path)
    finally:
        torch.serialization.set_crc32_options(before)
    return path


def _layout(path: Path) -> torch_zip.TorchZip:
    with open(path, "rb") as f:
        return torch_zip.read_central_directory(f, path.stat().st_size)


def test_central_directory_lists_torch_members_in_file_order(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    tz = _layout(path)
    reference = {i.filename: i for i in zipfile.ZipFile(path).infolist()}
    assert tz.prefix == "ckpt/"
    assert {m.name for m in tz.members} == set(reference)
    assert [m.header_offset for m in tz.members] == sorted(m.header_offset for m in tz.members)
    for member in tz.members:
        assert (member.crc, member.size, member.header_offset) == (
            reference[member.name].CRC,
            reference[member.name].file_size,
            reference[member.name].header_offset,
        )
    assert tz.member("data.pkl") is not None and tz.member("version") is not None
    assert tz.crc_recorded
    assert tz.central_offset + tz.central_size < path.stat().st_size


def test_read_member_returns_exactly_the_pickle(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    tz = _layout(path)
    member = tz.member("data.pkl")
    assert member is not None
    with open(path, "rb") as f:
        data = torch_zip.read_member(f, tz, member)
    assert data == zipfile.ZipFile(path).read("ckpt/data.pkl")


def test_deflated_member_is_read_and_crc_checked(tmp_path: Path) -> None:
    # torch.save never compresses, but a re-zipped archive may; torch's reader accepts deflate.
    src = _save(tmp_path / "ckpt.pt")
    dst = tmp_path / "rezipped.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    tz = _layout(dst)
    member = tz.member("data.pkl")
    assert member is not None and member.method == torch_zip.DEFLATED
    with open(dst, "rb") as f:
        assert torch_zip.read_member(f, tz, member) == zipfile.ZipFile(src).read("ckpt/data.pkl")
        assert torch_zip.check_crcs(f, tz)["crc_checked"] == len(tz.members)


@pytest.mark.parametrize("chunk", [4096, 65536, 16 << 20])
def test_streamed_crc_matches_zlib_whatever_the_chunk_size(tmp_path: Path, chunk: int) -> None:
    path = _save(tmp_path / "ckpt.pt")
    tz = _layout(path)
    seen: list[tuple[int, int]] = []
    with open(path, "rb") as f:
        counts = torch_zip.check_crcs(f, tz, chunk_bytes=chunk, progress=lambda d, t: seen.append((d, t)))
    assert counts["crc_checked"] == len(tz.members)
    assert counts["bytes_read"] == tz.central_offset
    assert seen[-1] == (tz.central_offset, tz.central_offset)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))


def test_flipped_bit_is_a_crc_mismatch_naming_the_member(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    tz = _layout(path)
    big = max(tz.members, key=lambda m: m.size)
    data = bytearray(path.read_bytes())
    data[big.header_offset + 200] ^= 0x10  # inside its data: local header plus name are shorter than that
    path.write_bytes(bytes(data))
    with (
        open(path, "rb") as f,
        pytest.raises(torch_zip.ZipDamage, match=f"CRC mismatch in {tz.short_name(big)}"),
    ):
        torch_zip.check_crcs(f, tz, chunk_bytes=4096)


def test_crc_zero_means_not_recorded(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt", crc=False)
    tz = _layout(path)
    assert not tz.crc_recorded
    with open(path, "rb") as f:
        counts = torch_zip.check_crcs(f, tz)
    assert counts["crc_checked"] == 0 and counts["crc_not_recorded"] == len([m for m in tz.members if m.size])


@pytest.mark.parametrize("cut", [1, 22, 100, 0.5, -1, -22, -60])
def test_truncation_anywhere_is_reported_as_truncated(tmp_path: Path, cut: float) -> None:
    path = _save(tmp_path / "ckpt.pt")
    data = path.read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    path.write_bytes(data[:size])
    with open(path, "rb") as f, pytest.raises(torch_zip.ZipDamage) as caught:
        torch_zip.read_central_directory(f, size)
    assert caught.value.truncated, caught.value.cause


def test_appended_bytes_are_reported(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    path.write_bytes(path.read_bytes() + b"x" * 100)
    with open(path, "rb") as f, pytest.raises(torch_zip.ZipDamage, match="100 bytes of unexpected data"):
        torch_zip.read_central_directory(f, path.stat().st_size)


def test_overlapping_members_are_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    tz = _layout(path)
    second = tz.members[1]
    # Point the second member's header at the first one's: a damaged central directory.
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02" + data[tz.central_offset + 4 : tz.central_offset + 6], tz.central_offset)
    entries = [i for i in range(entry, len(data)) if data[i : i + 4] == b"PK\x01\x02"]
    import struct

    struct.pack_into("<I", data, entries[1] + 42, tz.members[0].header_offset + 10)
    path.write_bytes(bytes(data))
    with open(path, "rb") as f, pytest.raises(torch_zip.ZipDamage, match="overlaps"):
        torch_zip.read_central_directory(f, len(data))
    assert second.name  # the member that was moved


def test_crc_of_python_zlib_agrees_with_zip_record(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("ckpt/data.pkl")
        assert zlib.crc32(z.read(info)) == info.CRC


def _deflated_pickle_archive(path: Path, stream: bytes, size: int) -> torch_zip.TorchZip:
    from tests.hostile import RawMember, write_zip

    write_zip(path, [RawMember("x/data.pkl", stream, method=8, size=size), RawMember("x/version", b"3\n")])
    return _layout(path)


def test_deflated_member_is_inflated_no_further_than_its_recorded_size(tmp_path: Path) -> None:
    from tests.hostile import deflate_bomb

    bomb = deflate_bomb(256 << 20)
    tz = _deflated_pickle_archive(tmp_path / "x.pt", bomb, size=len(bomb))
    member = tz.member("data.pkl")
    assert member is not None
    with open(tmp_path / "x.pt", "rb") as f, pytest.raises(torch_zip.ZipDamage, match="inflates past"):
        torch_zip.read_member(f, tz, member)


def test_deflated_member_whose_stream_ends_early_is_damaged(tmp_path: Path) -> None:
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = squeezer.compress(b"abc" * 1000) + squeezer.flush()
    tz = _deflated_pickle_archive(tmp_path / "x.pt", stream[: len(stream) // 2], size=3000)
    member = tz.member("data.pkl")
    assert member is not None
    with (
        open(tmp_path / "x.pt", "rb") as f,
        pytest.raises(torch_zip.ZipDamage, match="cannot be decompressed"),
    ):
        torch_zip.read_member(f, tz, member)


def test_member_marked_as_a_folder_is_damage(tmp_path: Path) -> None:
    # torch's reader (miniz) treats a member with the DOS folder attribute as a folder and cannot read it.
    path = _save(tmp_path / "ckpt.pt")
    tz = _layout(path)
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02", tz.central_offset)
    data[entry + 38] |= 0x10  # low byte of the external attributes
    path.write_bytes(bytes(data))
    with open(path, "rb") as f, pytest.raises(torch_zip.ZipDamage, match="marked as a folder"):
        torch_zip.read_central_directory(f, len(data))


def test_end_record_whose_comment_is_cut_short_is_read_as_zip_readers_read_it(tmp_path: Path) -> None:
    path = _save(tmp_path / "ckpt.pt")
    data = bytearray(path.read_bytes())
    data[-1] = 0x01  # the comment length's high byte: 256 bytes of comment the file does not hold
    path.write_bytes(bytes(data))
    assert zipfile.ZipFile(path).testzip() is None
    assert _layout(path).member("data.pkl") is not None


def test_zip64_locator_with_a_wrong_offset_is_read_as_zip_readers_read_it(tmp_path: Path) -> None:
    # zipfile and torch's reader take the zip64 end record right before the locator.
    path = _save(tmp_path / "ckpt.pt")
    data = bytearray(path.read_bytes())
    locator = data.rindex(b"PK\x06\x07")
    data[locator + 8] ^= 0x01  # low byte of the zip64 end record's offset
    path.write_bytes(bytes(data))
    assert zipfile.ZipFile(path).testzip() is None
    assert _layout(path).member("data.pkl") is not None


@pytest.mark.parametrize(
    ("signature", "field"),
    [(b"PK\x06\x06", 20), (b"PK\x06\x07", 18)],
    ids=["zip64-record-cd-disk", "locator-disk-count"],
)
def test_zip64_records_naming_other_disks_are_damage(tmp_path: Path, signature: bytes, field: int) -> None:
    # Found by the property tests: torch's reader refuses these as multi-disk archives.
    path = _save(tmp_path / "ckpt.pt")
    data = bytearray(path.read_bytes())
    record = data.rindex(signature)
    data[record + field] ^= 0x01
    path.write_bytes(bytes(data))
    with open(path, "rb") as f, pytest.raises(torch_zip.ZipDamage, match="multi-part"):
        torch_zip.read_central_directory(f, len(data))
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)
