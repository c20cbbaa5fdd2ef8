"""Reading a file's byte ranges at the disk's speed and hashing them, on one or several threads.

- CRC-32 from ISA-L (`isal`, the `fast` extra) where it is installed, several times faster than zlib's;
  `zlib.crc32` otherwise, so the preflight still runs with only its two runtime dependencies.
- Reads go into one reused buffer per thread (`os.preadv`, no copy beyond the kernel's), each thread streams
  its own contiguous part of the file sequentially, and the kernel reads ahead (`POSIX_FADV_SEQUENTIAL`), so
  the disk works while a chunk is hashed.
- DEFLATED members are inflated with a bounded output per call: memory stays constant whatever they claim.
- Several ranges are hashed at once when the caller allows more than one thread (zlib, ISA-L and hashlib
  release the GIL). The threads share no lock with the caller: results come back through a `SimpleQueue`
  (whose `put` is reentrant) and cancellation is a plain flag, so an interrupt (SIGINT, SIGTERM handler) in
  the calling thread at any moment ends the work after at most one chunk per thread, with bounded joins.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

try:  # optional: ISA-L's CRC-32, same results as zlib's
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - depends on what is installed
    _fast_crc32 = None

Crc32 = Callable[..., int]
crc32: Crc32 = _fast_crc32 if _fast_crc32 is not None else zlib.crc32
IMPLEMENTATION = "isal" if _fast_crc32 is not None else "zlib"

STORED = 0
DEFLATED = 8
CHUNK_BYTES = 8 * 1024 * 1024
# After a stop, how long the caller waits for its threads (each stops after its current chunk) before it
# leaves them behind: they own their file descriptors and buffers, so nothing they touch goes away.
JOIN_BUDGET_S = 2.0
_POLL_S = 0.2

T = TypeVar("T")
R = TypeVar("R")


class InflateError(Exception):
    """A DEFLATED range that is not valid deflate data, or (`too_large`) inflates past the size it claims."""

    def __init__(self, cause: str, *, too_large: bool = False) -> None:
        super().__init__(cause)
        self.too_large = too_large


class RangeReader:
    """Reads byte ranges of a file into one reused buffer, through a file description of its own.

    Its own description (a reopen of the same file, not a `dup`) gives each reader its own kernel read-ahead
    state, so several readers each stream sequentially, and stays valid if the caller closes its file first.
    """

    def __init__(self, fd: int, chunk_bytes: int = CHUNK_BYTES) -> None:
        try:
            self._fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            if os.fstat(self._fd).st_ino != os.fstat(fd).st_ino:
                os.close(self._fd)
                raise OSError("reopened another file")
        except OSError:  # no /proc: share the caller's description
            self._fd = os.dup(fd)
        if hasattr(os, "posix_fadvise"):
            # A larger kernel read-ahead window keeps the disk busy while a chunk is being hashed.
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._buf = bytearray(chunk_bytes)
        self._view = memoryview(self._buf)

    @property
    def chunk_bytes(self) -> int:
        return len(self._buf)

    def read(self, offset: int, length: int) -> memoryview:
        """Up to one chunk of bytes at `offset` (fewer only at the end of the file); valid until the next read."""
        want = min(length, len(self._buf))
        got = 0
        while got < want:
            n = os.preadv(self._fd, [self._view[got:want]], offset + got)
            if n == 0:
                break
            got += n
        return self._view[:got]

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class RangeCrc:
    crc: int
    size: int  # bytes after inflation
    read: int  # bytes read from the file (less than asked when the file ends early)


def crc_of_range(
    reader: RangeReader,
    offset: int,
    length: int,
    method: int,
    size_limit: int,
    *,
    first: memoryview | bytes = b"",
) -> RangeCrc:
    """CRC-32 of `length` stored or deflated bytes at `offset`; inflation stops once past `size_limit` bytes,
    one chunk at most per call, so a member that claims little and inflates to much costs no memory.

    `first` holds bytes of the range already read (a prefix), so a small member costs one read in all.
    """
    inflate = zlib.decompressobj(-15) if method == DEFLATED else None
    value = 0
    size = 0
    done = 0

    def feed(piece: memoryview | bytes) -> None:
        nonlocal value, size
        if inflate is None:
            value = crc32(piece, value)
            size += len(piece)
            return
        data: memoryview | bytes = piece
        try:
            while data and not inflate.eof:
                out = inflate.decompress(data, reader.chunk_bytes)
                value = crc32(out, value)
                size += len(out)
                if size > size_limit:
                    raise InflateError("inflates past its recorded size", too_large=True)
                data = inflate.unconsumed_tail
        except zlib.error as exc:
            raise InflateError("cannot be decompressed") from exc

    if first:
        feed(first[:length])
        done = min(len(first), length)
    while done < length:
        view = reader.read(offset + done, length - done)
        if not view:
            break
        feed(view)
        done += len(view)
    return RangeCrc(value, size, done)


class _Cancel:
    """A flag and a horizon read by the threads without a lock: item indexes above `last` are not started."""

    def __init__(self, count: int) -> None:
        self.last = count - 1


@dataclass(frozen=True)
class _Done(Generic[R]):
    index: int
    result: R | None
    error: BaseException | None


_FINISHED = object()


def run_in_order(
    items: Sequence[T],
    work: Callable[[RangeReader, T], R],
    *,
    threads: int,
    open_reader: Callable[[], RangeReader],
    weight: Callable[[T], int] = lambda _item: 1,
) -> Iterator[R]:
    """Results of `work(reader, item)` for each item, in item order, computed by up to `threads` threads.

    Each thread takes a contiguous run of items of about equal total `weight` (bytes), so each reads its part
    of the file sequentially.

    The first error in item order is raised once every earlier item is done; later items are not started.
    Closing the iterator early (or an exception in the caller, a KeyboardInterrupt included) stops the
    threads after their current chunk and waits at most JOIN_BUDGET_S for them.
    """
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        yield from _run_inline(items, work, open_reader)
        return
    cancel = _Cancel(len(items))
    results: queue.SimpleQueue[_Done[R] | object] = queue.SimpleQueue()

    def worker(indexes: range) -> None:
        reader: RangeReader | None = None
        try:
            reader = open_reader()
            for index in indexes:
                if index > cancel.last:
                    break
                try:
                    results.put(_Done(index, work(reader, items[index]), None))
                except Exception as exc:  # handed to the caller, in item order
                    results.put(_Done(index, None, exc))
        except BaseException as exc:  # opening the reader failed
            results.put(_Done(-1, None, exc))
        finally:
            if reader is not None:
                reader.close()
            results.put(_FINISHED)

    parts = _split(items, weight, threads)
    threads = len(parts)
    pool = [
        threading.Thread(target=worker, args=(part,), name=f"crc-{n}", daemon=True)
        for n, part in enumerate(parts)
    ]
    for thread in pool:
        thread.start()
    try:
        yield from _collect(items, results, cancel, threads)
    finally:
        cancel.last = -1
        deadline = time.monotonic() + JOIN_BUDGET_S
        for thread in pool:
            thread.join(max(0.0, deadline - time.monotonic()))


def _split(items: Sequence[T], weight: Callable[[T], int], parts: int) -> list[range]:
    """Contiguous index ranges of about equal total weight, none empty."""
    weights = [max(1, weight(item)) for item in items]
    total = sum(weights)
    bounds = [0]
    running = 0
    for index, w in enumerate(weights):
        running += w
        if running * parts >= total * len(bounds) and len(bounds) < parts and index + 1 < len(items):
            bounds.append(index + 1)
    bounds.append(len(items))
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _collect(
    items: Sequence[T], results: queue.SimpleQueue[_Done[R] | object], cancel: _Cancel, threads: int
) -> Iterator[R]:
    finished = 0
    done: dict[int, _Done[R]] = {}
    next_index = 0
    while next_index < len(items):
        try:
            item = results.get(timeout=_POLL_S)
        except queue.Empty:
            continue
        if item is _FINISHED:
            finished += 1
            if finished == threads and next_index not in done:
                raise RuntimeError("hashing threads ended before every range was done")
            continue
        assert isinstance(item, _Done)
        if item.index < 0 and item.error is not None:
            raise item.error
        done[item.index] = item
        if item.error is not None:
            cancel.last = min(cancel.last, item.index)
        while next_index in done:
            ready = done.pop(next_index)
            next_index += 1
            if ready.error is not None:
                raise ready.error
            yield ready.result  # type: ignore[misc]


def _run_inline(
    items: Sequence[T], work: Callable[[RangeReader, T], R], open_reader: Callable[[], RangeReader]
) -> Iterator[R]:
    reader = open_reader()
    try:
        for item in items:
            yield work(reader, item)
    finally:
        reader.close()
