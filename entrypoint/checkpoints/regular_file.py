"""Open a file for reading only if it is a regular file, without ever blocking in open().

A FIFO, a character device or a socket placed where a checkpoint or its sidecar is expected would make a
plain open() wait forever for a writer (or read endless data). O_NONBLOCK makes the open return at once
whatever the file is; fstat on the opened descriptor (not the name, which can be swapped in between) then
decides. Symbolic links are followed: a checkpoint linked from a download cache is an ordinary case.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotRegularFile(OSError):
    """The path names a FIFO, device, socket or folder."""


def open_regular(path: Path | str) -> BinaryIO:
    """An unbuffered binary reader on `path`; NotRegularFile for anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        # Reads of a regular file never block; clear the flag so no reader sees EAGAIN semantics.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
