"""Which mount a folder lies on, read from /proc/self/mountinfo. Torch-free.

Two bind mounts of one disk share st_dev, yet rename() between them fails with EXDEV: only the mount tells
them apart (quarantine). The file system type says whether a folder is a network file system that other
machines may share (several machines, one OUTPUT_DIR).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
# File system types other machines can mount too (a shared OUTPUT_DIR is possible on these).
NETWORK_TYPES = frozenset(
    {"nfs", "nfs4", "ceph", "fuse.ceph", "fuse.cephfs", "cifs", "smb3", "glusterfs", "fuse.glusterfs",
     "lustre", "gpfs", "beegfs", "fuse.sshfs", "9p", "virtiofs", "fuse.juicefs", "fuse.s3fs"}
)  # fmt: skip


@dataclass(frozen=True)
class Mount:
    mount_id: int
    point: str
    fstype: str
    source: str

    @property
    def is_network(self) -> bool:
        return self.fstype in NETWORK_TYPES


def mount_of(folder: Path, mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount `folder` lies on (a later mount on top of the same point wins); None when unknown."""
    try:
        real = os.path.realpath(folder)
        lines = mountinfo.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return None
    best: Mount | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            after = fields[fields.index("-", 6) + 1 :] if "-" in fields[6:] else []
            fstype = after[0] if after else "unknown"
            source = _unescape(after[1]) if len(after) > 1 else ""
            best = Mount(int(fields[0]), point, fstype, source)
    return best


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in a path as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)
