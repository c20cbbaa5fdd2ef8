"""Reading /proc/self/mountinfo: the mount a folder lies on, with its type."""

from __future__ import annotations

from pathlib import Path

from entrypoint.mounts import mount_of

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw
27 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:45 / /output rw,relatime - nfs4 10.0.0.5:/export/f5tts rw,vers=4.2
41 40 0:46 / /output/with\\040space rw,relatime shared:7 master:2 - ceph 10.0.0.6:6789:/ rw,name=admin
"""


def test_the_deepest_mount_holding_the_folder_wins(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    nfs = mount_of(Path("/output/run1"), info)
    assert nfs is not None and (nfs.fstype, nfs.source, nfs.is_network) == (
        "nfs4",
        "10.0.0.5:/export/f5tts",
        True,
    )
    ceph = mount_of(Path("/output/with space/x"), info)
    assert ceph is not None and (ceph.point, ceph.fstype, ceph.is_network) == (
        "/output/with space",
        "ceph",
        True,
    )
    root = mount_of(Path("/outputs"), info)  # a name that only starts like /output
    assert root is not None and (root.fstype, root.is_network) == ("ext4", False)


def test_an_unreadable_mountinfo_tells_nothing(tmp_path: Path) -> None:
    assert mount_of(Path("/"), tmp_path / "missing") is None


def test_this_machines_root_is_found() -> None:
    mount = mount_of(Path("/"))
    assert mount is not None and mount.point == "/" and mount.fstype != "unknown"
