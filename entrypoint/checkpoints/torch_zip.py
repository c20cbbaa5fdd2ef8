"""The zip container of a `torch.save` file: end record, zip64, central directory, local headers, CRC32.

Reads only what it needs: the quick path touches the end of the file, the central directory and the one
member it is asked for (data.pkl); the deep path streams every member once, in file order, in large reads.
No torch: the format is plain zip (stored members, 64-byte aligned) with a fixed set of member names.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

EOCD_SIG = 0x06054B50
ZIP64_EOCD_SIG = 0x06064B50
ZIP64_LOCATOR_SIG = 0x07064B50
CENTRAL_SIG = 0x02014B50
LOCAL_SIG = 0x04034B50

_EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes, then the comment
_ZIP64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes, then name, extra, comment
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes, then name, extra
_MAX_COMMENT = 0xFFFF
STORED = 0
DEFLATED = 8
# A state dict's pickle is kilobytes to a few MB (F5-TTS v1 Base training checkpoint: about 0.25 MB);
# refusing absurd sizes keeps memory bounded on garbage and on zip bombs.
MAX_PICKLE_BYTES = 64 * 1024 * 1024
# Compressed bytes handed to the inflater at a time when reading a deflated data.pkl.
INFLATE_PIECE_BYTES = 1024 * 1024
CHUNK_BYTES = 16 * 1024 * 1024
# Buffers in flight between the reader thread and the CRC: enough for the disk to run ahead while the CRC
# waits for a CPU on a busy machine, few enough to keep memory constant.
BUFFERS = 4


class ZipDamage(Exception):
    """Not a well-formed torch zip archive. `cause` is plain words; `truncated` when the file ends early."""

    def __init__(self, cause: str, *, truncated: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.truncated = truncated


@dataclass(frozen=True)
class Member:
    name: str  # full name inside the archive, e.g. "model_last/data/17"
    method: int
    crc: int  # 0 when torch.save was told not to record CRCs
    compressed_size: int
    size: int
    header_offset: int


@dataclass(frozen=True)
class TorchZip:
    file_size: int
    prefix: str  # archive folder plus "/", e.g. "model_last/"
    members: tuple[Member, ...]  # in file order
    central_offset: int
    central_size: int

    def member(self, short_name: str) -> Member | None:
        """A member by its name below the archive folder: "data.pkl", "data/17", "version"."""
        return self._by_name().get(self.prefix + short_name)

    def _by_name(self) -> dict[str, Member]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {m.name: m for m in self.members}
            object.__setattr__(self, "_index", cached)
        return cached

    def short_name(self, member: Member) -> str:
        return member.name[len(self.prefix) :]

    @property
    def crc_recorded(self) -> bool:
        return any(m.crc != 0 for m in self.members if m.size > 0)


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    data = f.read(length)
    return data if data is not None else b""


def _find_end_record(tail: bytes, tail_offset: int, file_size: int) -> tuple[int, tuple[int, ...]]:
    """Offset and fields of the end-of-central-directory record, searched backwards as zip readers do."""
    pos = tail.rfind(struct.pack("<I", EOCD_SIG))
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            fields = _EOCD.unpack_from(tail, pos)
            comment_len = fields[7]
            end = tail_offset + pos + _EOCD.size + comment_len
            # A comment cut short is tolerated, as zipfile and torch's reader (miniz) tolerate it.
            if end >= file_size:
                return tail_offset + pos, fields
            if end < file_size:
                extra = file_size - end
                raise ZipDamage(f"{extra} bytes of unexpected data after the end of the zip archive")
        pos = tail.rfind(struct.pack("<I", EOCD_SIG), 0, pos)
    raise ZipDamage("zip central directory missing", truncated=True)


def read_central_directory(f: BinaryIO, file_size: int) -> TorchZip:
    """Parse end record, zip64 records and the central directory; check members lie inside the file."""
    tail_len = min(file_size, _EOCD.size + _MAX_COMMENT + _ZIP64_LOCATOR.size + _ZIP64_EOCD.size)
    tail_offset = file_size - tail_len
    tail = _read_at(f, tail_offset, tail_len)
    if len(tail) != tail_len:
        raise ZipDamage("could not read the end of the file", truncated=True)
    eocd_offset, fields = _find_end_record(tail, tail_offset, file_size)
    _sig, disk, cd_disk, _n_disk, n_entries, cd_size, cd_offset, _comment = fields
    if disk != 0 or cd_disk != 0:
        raise ZipDamage("multi-part zip archive (not written by torch.save)")
    central_end = eocd_offset
    locator_offset = eocd_offset - _ZIP64_LOCATOR.size
    locator = _read_at(f, locator_offset, _ZIP64_LOCATOR.size) if locator_offset >= 0 else b""
    has_locator = len(locator) == _ZIP64_LOCATOR.size and locator[:4] == struct.pack("<I", ZIP64_LOCATOR_SIG)
    # torch (miniz) writes zip64 records for every archive, needed or not; read them whenever present.
    if has_locator:
        _sig, z64_disk, z64_offset, total_disks = _ZIP64_LOCATOR.unpack(locator)
        if z64_disk != 0 or total_disks != 1:  # zipfile and torch's reader refuse these as multi-disk
            raise ZipDamage("multi-part zip archive (not written by torch.save)")
        if z64_offset + _ZIP64_EOCD.size > locator_offset:
            raise ZipDamage("zip64 end record points outside the file")
        z = _ZIP64_EOCD.unpack(_read_at(f, z64_offset, _ZIP64_EOCD.size))
        if z[0] != ZIP64_EOCD_SIG and locator_offset >= _ZIP64_EOCD.size:
            # zipfile and torch's reader look right before the locator, whatever its offset field says.
            z64_offset = locator_offset - _ZIP64_EOCD.size
            z = _ZIP64_EOCD.unpack(_read_at(f, z64_offset, _ZIP64_EOCD.size))
        if z[0] != ZIP64_EOCD_SIG:
            raise ZipDamage("zip64 end record damaged")
        if z[4] != 0 or z[5] != 0 or z[6] != z[7]:  # torch's reader refuses these as multi-disk
            raise ZipDamage("multi-part zip archive (not written by torch.save)")
        n_entries, cd_size, cd_offset = z[7], z[8], z[9]
        central_end = z64_offset
    elif n_entries == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        raise ZipDamage("zip64 locator missing")
    if cd_offset + cd_size != central_end:
        if cd_offset + cd_size > central_end:
            raise ZipDamage("zip central directory points past the end of the file", truncated=True)
        raise ZipDamage("zip central directory does not end where the end record starts")
    central = _read_at(f, cd_offset, cd_size)
    if len(central) != cd_size:
        raise ZipDamage("zip central directory cut short", truncated=True)
    members = _parse_central(central, n_entries)
    return _check_layout(members, file_size, cd_offset, cd_size)


def _zip64_extra(extra: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 0x0001:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        pos += 4 + length
    if 0xFFFFFFFF in (size, csize, offset):
        raise ZipDamage("zip64 sizes missing in the central directory")
    return size, csize, offset


def _parse_central(central: bytes, n_entries: int) -> list[Member]:
    members: list[Member] = []
    pos = 0
    for _ in range(n_entries):
        if pos + _CENTRAL.size > len(central):
            raise ZipDamage("zip central directory damaged (fewer entries than recorded)")
        f = _CENTRAL.unpack_from(central, pos)
        if f[0] != CENTRAL_SIG:
            raise ZipDamage("zip central directory damaged (bad entry signature)")
        flags, method, crc, csize, size = f[3], f[4], f[7], f[8], f[9]
        name_len, extra_len, comment_len, disk, header_offset = f[10], f[11], f[12], f[13], f[16]
        if disk not in (0, 0xFFFF):
            raise ZipDamage("multi-part zip archive (not written by torch.save)")
        start = pos + _CENTRAL.size
        raw_name = central[start : start + name_len]
        extra = central[start + name_len : start + name_len + extra_len]
        pos = start + name_len + extra_len + comment_len
        if pos > len(central):
            raise ZipDamage("zip central directory damaged (entry runs past its end)")
        if flags & 0x1:
            raise ZipDamage("encrypted zip member (not written by torch.save)")
        # torch's reader (miniz) cannot extract these: strong encryption, patch data, a folder entry.
        if flags & 0x60:
            raise ZipDamage("zip member with unsupported flags (not written by torch.save)")
        if f[15] & 0x10 or raw_name.endswith(b"/"):
            raise ZipDamage(f"zip member {raw_name.decode('utf-8', 'replace')} is marked as a folder")
        if method not in (STORED, DEFLATED):
            raise ZipDamage(f"zip member compressed with method {method} (not written by torch.save)")
        size, csize, header_offset = _zip64_extra(extra, size, csize, header_offset)
        if method == STORED and size != csize:
            raise ZipDamage("zip central directory damaged (stored member with two sizes)")
        name = raw_name.decode("utf-8", "replace")
        members.append(Member(name, method, crc, csize, size, header_offset))
    if pos != len(central):
        raise ZipDamage("zip central directory damaged (more bytes than its entries)")
    return members


def _check_layout(members: list[Member], file_size: int, cd_offset: int, cd_size: int) -> TorchZip:
    if not members:
        raise ZipDamage("empty zip archive")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ZipDamage("zip archive lists a member twice")
    prefix = names[0].split("/", 1)[0] + "/"
    if any(not n.startswith(prefix) for n in names):
        raise ZipDamage("zip members are not in one archive folder (not written by torch.save)")
    ordered = sorted(members, key=lambda m: m.header_offset)
    for m, nxt in zip(ordered, [*ordered[1:], None], strict=True):
        # The smallest possible local header is 30 bytes plus the name; data follows it.
        end = m.header_offset + _LOCAL.size + len(m.name.encode()) + m.compressed_size
        limit = nxt.header_offset if nxt is not None else cd_offset
        if end > limit:
            raise ZipDamage(f"zip member {m.name[len(prefix) :]} overlaps the next one")
    return TorchZip(file_size, prefix, tuple(ordered), cd_offset, cd_size)


def _local_data_offset(header: bytes, member: Member) -> int:
    """Where a member's data starts, from its local header (its extra field differs from the central one)."""
    f = _LOCAL.unpack_from(header, 0)
    if f[0] != LOCAL_SIG:
        raise ZipDamage(f"local header of {member.name} damaged")
    name_len, extra_len = f[9], f[10]
    name = header[_LOCAL.size : _LOCAL.size + name_len]
    if len(name) == name_len and name.decode("utf-8", "replace") != member.name:
        raise ZipDamage(f"local header of {member.name} names another file")
    return member.header_offset + _LOCAL.size + name_len + extra_len


def read_member(f: BinaryIO, tz: TorchZip, member: Member, *, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """The uncompressed bytes of one (small) member, checked against its local header.

    Memory stays within `limit` plus one read piece: the recorded sizes are checked first, and a deflated
    member is inflated piece by piece, never past its recorded size (a zip bomb stops one byte over it).
    """
    short = tz.short_name(member)
    if member.size > limit:
        raise ZipDamage(f"{short} is {member.size} bytes: too large for a state dict's pickle")
    # Deflate never grows data by more than a few bytes per 16 kB block: more means a lie or garbage.
    if member.compressed_size > member.size + member.size // 1000 + 1024:
        raise ZipDamage(f"{short} is stored in more bytes than it holds (damaged central directory)")
    header = _read_at(f, member.header_offset, _LOCAL.size + 1024)
    data_offset = _local_data_offset(header, member)
    if member.method == DEFLATED:
        data = _inflate(f, data_offset, member, short)
    else:
        data = _read_at(f, data_offset, member.compressed_size)
        if len(data) != member.compressed_size:
            raise ZipDamage(f"{short} cut short", truncated=True)
    if len(data) != member.size:
        raise ZipDamage(f"{short} has {len(data)} bytes where the central directory says {member.size}")
    return data


def _inflate(f: BinaryIO, data_offset: int, member: Member, short: str) -> bytes:
    """Inflate one member in pieces, each call capped (`max_length`) at one byte past the recorded size."""
    inflater = zlib.decompressobj(-15)
    out = bytearray()
    f.seek(data_offset)
    left = member.compressed_size
    pending = b""
    while not inflater.eof:
        if not pending:
            if left == 0:
                break
            pending = f.read(min(INFLATE_PIECE_BYTES, left)) or b""
            if not pending:
                raise ZipDamage(f"{short} cut short", truncated=True)
            left -= len(pending)
        room = member.size + 1 - len(out)
        try:
            out += inflater.decompress(pending, room)
        except zlib.error as exc:
            raise ZipDamage(f"{short} cannot be decompressed") from exc
        if len(out) > member.size:
            raise ZipDamage(f"{short} inflates past the {member.size} bytes the central directory records")
        pending = inflater.unconsumed_tail
    if not inflater.eof:
        raise ZipDamage(f"{short} cannot be decompressed (the compressed data ends early)")
    return bytes(out)


def _advise_sequential(f: BinaryIO, start: int, end: int) -> None:
    """A larger kernel read-ahead window keeps the disk busy while a chunk is being hashed."""
    # Not a real file, or not Linux: plain reads still work.
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        os.posix_fadvise(f.fileno(), start, end - start, os.POSIX_FADV_SEQUENTIAL)


def _chunks(f: BinaryIO, start: int, end: int, chunk_bytes: int) -> Iterator[memoryview]:
    """Consecutive views of file bytes [start, end), read by a helper thread while the caller works.

    Reading and CRC32 overlap, so the pass runs at the speed of the slower of the two (the disk), not the sum.
    A few rotating buffers keep memory constant; a view is valid until the next one is requested.
    """
    free: queue.Queue[bytearray] = queue.Queue()
    ready: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(chunk_bytes))
    stop = threading.Event()

    def reader() -> None:
        try:
            _advise_sequential(f, start, end)
            f.seek(start)
            pos = start
            while pos < end and not stop.is_set():
                buf = free.get()
                if stop.is_set():
                    break
                want = min(chunk_bytes, end - pos)
                view = memoryview(buf)[:want]
                got = 0
                while got < want:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                ready.put((buf, got))
                pos += got
                if got < want:
                    break
            ready.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    thread = threading.Thread(target=reader, name="crc-reader", daemon=True)
    thread.start()
    held: bytearray | None = None
    try:
        while True:
            item = ready.get()
            if held is not None:
                free.put(held)
                held = None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            held, got = item
            yield memoryview(held)[:got]
            if got == 0:
                return
    finally:
        stop.set()
        free.put(bytearray(0))  # wakes the reader if it waits for a buffer
        thread.join()


class _Stream:
    """A forward-only cursor over consecutive chunks, so headers and data come from one sequential read."""

    def __init__(self, chunks: Iterator[memoryview], start: int) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")
        self._pos_in_view = 0
        self.offset = start

    def _fill(self) -> bool:
        while self._pos_in_view >= len(self._view):
            nxt = next(self._chunks, None)
            if nxt is None or len(nxt) == 0:
                return False
            self._view, self._pos_in_view = nxt, 0
        return True

    def take(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n > 0 and self._fill():
            piece = self._view[self._pos_in_view : self._pos_in_view + n]
            parts.append(bytes(piece))
            self._pos_in_view += len(piece)
            self.offset += len(piece)
            n -= len(piece)
        return b"".join(parts)

    def feed(self, n: int, sink: Callable[[memoryview], None]) -> int:
        done = 0
        while done < n and self._fill():
            piece = self._view[self._pos_in_view : self._pos_in_view + (n - done)]
            sink(piece)
            self._pos_in_view += len(piece)
            self.offset += len(piece)
            done += len(piece)
        return done

    def skip_to(self, offset: int) -> None:
        if offset < self.offset:
            raise ZipDamage("zip members overlap")
        self.feed(offset - self.offset, lambda _piece: None)


class _Crc:
    def __init__(self, method: int) -> None:
        self.value = 0
        self.size = 0
        self._inflate = zlib.decompressobj(-15) if method == DEFLATED else None

    def __call__(self, piece: memoryview) -> None:
        if self._inflate is None:
            self.value = zlib.crc32(piece, self.value)
            self.size += len(piece)
        else:
            out = self._inflate.decompress(piece)
            self.value = zlib.crc32(out, self.value)
            self.size += len(out)


def check_crcs(
    f: BinaryIO,
    tz: TorchZip,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk_bytes: int | None = None,
) -> dict[str, int]:
    """Stream every member once in file order: local headers, sizes and CRC32 (0 = not recorded, skipped).

    Returns counts for the report; raises ZipDamage naming the first damaged member.
    """
    end = tz.central_offset
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    chunks = _chunks(f, 0, end, chunk_bytes)
    try:
        return _check_members(tz, _Stream(chunks, 0), end, chunk_bytes, progress)
    finally:
        chunks.close()  # stops the reader thread before the caller closes the file


def _check_members(
    tz: TorchZip,
    stream: _Stream,
    end: int,
    chunk_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, int]:
    checked = 0
    unrecorded = 0
    last_report = -1
    for member in tz.members:
        short = tz.short_name(member)
        stream.skip_to(member.header_offset)
        header = stream.take(_LOCAL.size)
        if len(header) < _LOCAL.size:
            raise ZipDamage(f"{short} cut short", truncated=True)
        name_len, extra_len = _LOCAL.unpack(header)[9:11]
        header += stream.take(name_len + extra_len)
        _local_data_offset(header, member)
        crc = _Crc(member.method)
        got = stream.feed(member.compressed_size, crc)
        if got < member.compressed_size:
            raise ZipDamage(f"{short} cut short", truncated=True)
        if crc.size != member.size:
            raise ZipDamage(f"size mismatch in {short}")
        if member.crc == 0 and member.size > 0:
            unrecorded += 1
        elif crc.value != member.crc:
            raise ZipDamage(f"CRC mismatch in {short}")
        else:
            checked += 1
        if progress is not None and stream.offset // chunk_bytes != last_report:
            last_report = stream.offset // chunk_bytes
            progress(stream.offset, end)
    stream.skip_to(end)  # whatever lies between the last member and the central directory
    if progress is not None:
        progress(end, end)
    return {"crc_checked": checked, "crc_not_recorded": unrecorded, "bytes_read": stream.offset}
