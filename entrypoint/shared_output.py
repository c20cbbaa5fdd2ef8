"""Several machines, one OUTPUT_DIR? Told by a marker, not guessed from the file system type. Torch-free.

Machine 0 writes OUTPUT_DIR/preflight/meeting.json (a fresh random token, and the checkpoint it will load
with its fingerprint) before it opens the meeting port. Every other machine, once connected (so the marker is
already written), reads the same name in its own OUTPUT_DIR: the token is there only when both machines see
one folder (NFS, CephFS, ...). It then fingerprints the checkpoint machine 0 named, as it sees it, and machine
0 compares: same file, or one line saying the shared storage shows the machines different contents. Either
way nothing is copied: machine 0 alone reads the checkpoint and sends the training state over the network.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from entrypoint.durable import replace_text
from entrypoint.machines import file_fingerprint
from entrypoint.mounts import mount_of
from entrypoint.naming import state_dir

MARKER_NAME = "meeting.json"
INCOHERENT_FIX = (
    "make the shared file system show every machine the same contents (NFS: no stale client caching; a "
    "replicated store: wait for it to settle), or give each machine its own OUTPUT_DIR"
)


def marker_path(output_dir: Path) -> Path:
    return state_dir(output_dir, 0) / MARKER_NAME


def write_marker(output_dir: Path, checkpoint: str | None) -> dict[str, Any]:
    """Machine 0, before the others may connect: the marker they look for. `checkpoint` is the file machine
    0 will load; it is named (relative to OUTPUT_DIR) only when it lies inside OUTPUT_DIR."""
    name = _inside(output_dir, checkpoint)
    marker = {
        "token": secrets.token_hex(16),
        "checkpoint": name,
        "fingerprint": file_fingerprint(output_dir / name) if name else None,
    }
    path = marker_path(output_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_text(path, json.dumps(marker) + "\n")
    except OSError:
        marker["token"] = None  # no marker: every machine is taken to have its own OUTPUT_DIR
    return marker


def look(output_dir: Path) -> dict[str, Any]:
    """Another machine, once connected: what it finds under machine 0's marker name, and its file system."""
    mount = mount_of(output_dir)
    seen: dict[str, Any] = {"filesystem": mount.fstype if mount else "unknown", "token": None}
    try:
        marker = json.loads(marker_path(output_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return seen
    if not isinstance(marker, dict) or not isinstance(marker.get("token"), str):
        return seen
    seen["token"] = marker["token"]
    name = marker.get("checkpoint")
    if isinstance(name, str) and _inside(output_dir, str(output_dir / name)) == name:
        seen["checkpoint"] = name
        seen["fingerprint"] = file_fingerprint(output_dir / name)
    return seen


def compare(rank: int, seen: Any, marker: dict[str, Any]) -> tuple[bool, str | None]:
    """(shares machine 0's OUTPUT_DIR, the problem when it sees machine 0's checkpoint differently)."""
    if marker["token"] is None or not isinstance(seen, dict) or seen.get("token") != marker["token"]:
        return False, None
    name = marker.get("checkpoint")
    if name and seen.get("fingerprint") != marker["fingerprint"]:
        theirs = seen.get("fingerprint") or "missing"
        return True, (
            f"machine {rank} shares OUTPUT_DIR with machine 0 but sees {name} differently: "
            f"{_describe(theirs)} there, {_describe(marker['fingerprint'])} on machine 0"
        )
    return True, None


def describe_main(sharing: list[int], compared: str | None) -> str:
    """Machine 0's line about the other machines' OUTPUT_DIRs."""
    if not sharing:
        return "machines: every other machine has its own OUTPUT_DIR; machine 0 alone reads and saves checkpoints"
    same = f"; they see {compared} as machine 0 does" if compared else ""
    return (
        f"machines: machine(s) {', '.join(map(str, sharing))} share this OUTPUT_DIR (machine 0's marker seen "
        f"there){same}; they copy nothing and write only their own preflight/machine-N records"
    )


def describe(rank: int, shared: bool, seen: dict[str, Any]) -> str:
    """This machine's line about its OUTPUT_DIR (machines other than 0)."""
    filesystem = seen.get("filesystem", "unknown")
    checkpoint = seen.get("checkpoint")
    if not shared:
        return (
            f"machines: OUTPUT_DIR on machine {rank} is its own ({filesystem}; machine 0's marker is not in "
            "it): nothing is read or written there, the training state comes over the network"
        )
    same = f"; {checkpoint} looks the same from both machines" if checkpoint else ""
    return (
        f"machines: OUTPUT_DIR on machine {rank} is the same folder as machine 0's ({filesystem}){same}; "
        "this machine copies nothing, writes only under preflight/machine-"
        f"{rank}, and machine 0 alone saves"
    )


def _inside(output_dir: Path, checkpoint: str | None) -> str | None:
    """`checkpoint` relative to OUTPUT_DIR when it lies inside it (not through '..'), else None."""
    if not checkpoint:
        return None
    try:
        relative = Path(checkpoint).relative_to(output_dir)
    except ValueError:
        return None
    return None if ".." in relative.parts or not relative.parts else relative.as_posix()


def _describe(fingerprint: str) -> str:
    if fingerprint == "missing":
        return "missing"
    size, _, digest = fingerprint.partition(":")
    return f"{int(size):,} bytes, sampled hash {digest}"
