"""Read every CPU limit that applies to this process: its affinity set and the CFS quota of each cgroup
from its own up to the highest one visible (cgroup v1, v2 and hybrid layouts).

Only reads, and only a few small files: /proc/self/cgroup, /proc/self/mountinfo, and one or two quota
files per cgroup level. Roots are parameters so tests can point the probe at copies of real trees.
Turning these facts into a CPU count is `entrypoint.cpu_plan`'s job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
# The kernel's default CFS period; cgroup v2 allows `cpu.max` to hold only the quota.
DEFAULT_PERIOD_US = 100_000


@dataclass(frozen=True)
class CpuLimit:
    """One upper bound on the CPUs this process can use."""

    cpus: float  # e.g. 1.5
    kind: str  # "affinity" | "cgroup-v2" | "cgroup-v1" | "override" | "online"
    source: str  # where the number comes from, in words


@dataclass(frozen=True)
class CpuFacts:
    """Every CPU limit found, and what could not be read."""

    limits: tuple[CpuLimit, ...]  # affinity (or online count) first, then quotas from own cgroup upwards
    notes: tuple[str, ...]  # unreadable or nonsensical files, in words


# (cgroup directory, its path as shown in messages, cgroup name, notes) -> limit, or None for no limit
_QuotaReader = Callable[[Path, str, str, list[str]], "CpuLimit | None"]


@dataclass(frozen=True)
class _Mount:
    root: str  # the cgroup path (in the reader's namespace) that the mount shows at its mount point
    mount_point: str
    super_options: frozenset[str]


def probe_cpu(
    proc_root: Path = Path("/proc"), fs_root: Path = Path("/"), affinity: int | None = None
) -> CpuFacts:
    """Collect the affinity set and every CFS quota from the own cgroup up to the top visible one.

    `affinity` is a CPU count; None reads `os.sched_getaffinity(0)` when `proc_root` is the real /proc,
    else `Cpus_allowed_list` of `<proc_root>/self/status`.
    """
    notes: list[str] = []
    limits: list[CpuLimit] = []
    count = _affinity_limit(Path(proc_root), Path(fs_root), affinity, notes)
    if count is not None:
        limits.append(count)
    limits.extend(_cgroup_limits(Path(proc_root), Path(fs_root), notes))
    return CpuFacts(limits=tuple(limits), notes=tuple(notes))


# --- affinity ------------------------------------------------------------------------------------------


def _affinity_limit(
    proc_root: Path, fs_root: Path, affinity: int | None, notes: list[str]
) -> CpuLimit | None:
    if affinity is not None:
        if affinity >= 1:
            return CpuLimit(float(affinity), "affinity", f"CPU affinity given by the caller: {affinity} CPUs")
        notes.append(f"CPU affinity given by the caller is {affinity}, which makes no sense; ignored")
    elif _is_real_proc(proc_root) and hasattr(os, "sched_getaffinity"):
        allowed = os.sched_getaffinity(0)
        if allowed:
            return CpuLimit(
                float(len(allowed)),
                "affinity",
                f"sched_getaffinity: CPUs {_format_cpu_list(allowed)} -> {_cpus_words(len(allowed))}",
            )
    else:
        from_status = _affinity_from_status(proc_root, notes)
        if from_status is not None:
            return from_status
    return _online_count(proc_root, fs_root, notes)


def _is_real_proc(proc_root: Path) -> bool:
    return os.path.realpath(proc_root) == "/proc"


def _affinity_from_status(proc_root: Path, notes: list[str]) -> CpuLimit | None:
    status = proc_root / "self" / "status"
    text = _read(status, notes, shown="/proc/self/status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            listed = line.partition(":")[2].strip()
            count = _count_cpu_list(listed)
            if count is None:
                notes.append(f"Cpus_allowed_list {listed!r} in /proc/self/status is not a CPU list; ignored")
                return None
            return CpuLimit(
                float(count),
                "affinity",
                f"Cpus_allowed_list {listed} in /proc/self/status -> {_cpus_words(count)}",
            )
    notes.append("/proc/self/status has no Cpus_allowed_list line; the affinity set is unknown")
    return None


def _online_count(proc_root: Path, fs_root: Path, notes: list[str]) -> CpuLimit | None:
    """Fallback when the affinity set is unknown: the CPUs the kernel has online."""
    online = fs_root / "sys" / "devices" / "system" / "cpu" / "online"
    text = _read(online, notes, shown="/sys/devices/system/cpu/online")
    if text is not None:
        count = _count_cpu_list(text.strip())
        if count is not None:
            return CpuLimit(
                float(count),
                "online",
                f"/sys/devices/system/cpu/online {text.strip()} -> {_cpus_words(count)}",
            )
        notes.append(f"/sys/devices/system/cpu/online {text.strip()!r} is not a CPU list; ignored")
    if _is_real_proc(proc_root):
        count = os.cpu_count()
        if count:
            return CpuLimit(float(count), "online", f"os.cpu_count() -> {_cpus_words(count)}")
    return None


def _count_cpu_list(listed: str) -> int | None:
    """Count a kernel CPU list such as `0-3,8,10-11`; None when it is not one."""
    total = 0
    for part in listed.split(","):
        first, dash, last = part.strip().partition("-")
        if not _is_number(first) or (dash and not _is_number(last)):
            return None
        span = int(last) - int(first) + 1 if dash else 1
        if span < 1:
            return None
        total += span
    return total or None


def _format_cpu_list(cpus: Iterable[int]) -> str:
    ranges: list[str] = []
    ordered = sorted(cpus)
    start = previous = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(ranges)


# --- cgroups -------------------------------------------------------------------------------------------


def _cgroup_limits(proc_root: Path, fs_root: Path, notes: list[str]) -> list[CpuLimit]:
    membership = _read(proc_root / "self" / "cgroup", notes, shown="/proc/self/cgroup")
    if membership is None:
        return []
    v1_path, v2_path = _parse_membership(membership, notes)
    if v1_path is None and v2_path is None:
        return []
    mountinfo = _read(proc_root / "self" / "mountinfo", notes, shown="/proc/self/mountinfo")
    if mountinfo is None:
        return []
    v1_mounts, v2_mounts = _parse_mountinfo(mountinfo, notes)
    # The kernel binds a controller to one hierarchy only: when `cpu` is on a v1 hierarchy, the v2
    # tree (hybrid layout) cannot have cpu.max, so it is not read at all.
    if v1_path is not None:
        if not v1_mounts:
            notes.append(
                f"/proc/self/cgroup puts the cpu controller at {v1_path}, but no cgroup v1 mount with "
                "the cpu controller is in /proc/self/mountinfo; its quota cannot be read"
            )
            return []
        return _walk(v1_mounts, v1_path, fs_root, notes, _read_v1_quota)
    if v2_path is not None and not v2_mounts:
        notes.append(
            f"/proc/self/cgroup puts this process in cgroup v2 {v2_path}, but no cgroup2 file system is "
            "mounted (see /proc/self/mountinfo); its quota cannot be read"
        )
        return []
    return _walk(v2_mounts, v2_path, fs_root, notes, _read_v2_quota) if v2_path is not None else []


def _parse_membership(text: str, notes: list[str]) -> tuple[str | None, str | None]:
    """From /proc/self/cgroup: the v1 cgroup path of the cpu controller and the v2 path (`0::` line)."""
    v1_path: str | None = None
    v2_path: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        hierarchy, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2 and _is_number(hierarchy) and path.startswith("/")):
            notes.append(f"/proc/self/cgroup line {line!r} is not 'id:controllers:path'; ignored")
            continue
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    return v1_path, v2_path


def _parse_mountinfo(text: str, notes: list[str]) -> tuple[list[_Mount], list[_Mount]]:
    """The visible cgroup v1 mounts carrying the cpu controller, and the cgroup2 mounts, in file order."""
    # A later mount on the same mount point hides the earlier one (a bind mount of the container's
    # cgroup over the host's hierarchy, for instance), so only the last mount per point counts.
    last_at: dict[str, tuple[str, _Mount]] = {}
    unreadable = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            separator = fields.index("-", 6)
        except ValueError:
            unreadable += 1
            continue
        if len(fields) < separator + 3:
            unreadable += 1
            continue
        fs_type = fields[separator + 1]
        options = frozenset(fields[separator + 3].split(",")) if len(fields) > separator + 3 else frozenset()
        mount = _Mount(_unescape(fields[3]), _unescape(fields[4]), options)
        last_at.pop(mount.mount_point, None)
        last_at[mount.mount_point] = (fs_type, mount)
    if unreadable:
        notes.append(f"{unreadable} line(s) of /proc/self/mountinfo could not be parsed; ignored")
    v1 = [
        mount for fs_type, mount in last_at.values() if fs_type == "cgroup" and "cpu" in mount.super_options
    ]
    v2 = [mount for fs_type, mount in last_at.values() if fs_type == "cgroup2"]
    return v1, v2


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _relative_to_mount(mount: _Mount, cgroup_path: str) -> str | None:
    """The cgroup's path below the mount point ("" for the mount point itself), or None if not visible."""
    if ".." in mount.root.split("/"):
        # The mount shows a cgroup above this process's cgroup namespace root (a namespace made after the
        # mount): which directory below it is ours cannot be known.
        return None
    root = mount.root.rstrip("/")
    path = cgroup_path.rstrip("/")
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    # Private cgroup namespace whose mount root is shown as the container's cgroup: the process sits at
    # the namespace root, which is what the mount point shows.
    if cgroup_path == "/":
        return ""
    return None


def _walk(
    mounts: list[_Mount], cgroup_path: str, fs_root: Path, notes: list[str], read_quota: _QuotaReader
) -> list[CpuLimit]:
    """Read the quota of the own cgroup and of each ancestor up to the mount point."""
    visible = [(m, rel) for m in mounts if (rel := _relative_to_mount(m, cgroup_path)) is not None]
    if not visible:
        where = ", ".join(f"{m.mount_point} (root {m.root})" for m in mounts)
        notes.append(f"cgroup {cgroup_path} is not visible under {where}; its quota cannot be read")
        return []
    # Where the same hierarchy is mounted more than once, the mount with the highest root shows the
    # most ancestors.
    visible.sort(key=lambda item: item[0].root.rstrip("/").count("/"))
    for mount, rel in visible:
        mount_dir = fs_root / mount.mount_point.lstrip("/")
        own_dir = mount_dir / rel if rel else mount_dir
        if own_dir.is_dir():
            break
    else:
        mount, rel = visible[0]
        notes.append(
            f"cgroup directory {_join(mount.mount_point, rel)} does not exist; its quota cannot be read"
        )
        return []
    parts = rel.split("/") if rel else []
    base = mount.root.rstrip("/")
    limits: list[CpuLimit] = []
    for depth in range(len(parts), -1, -1):
        level_rel = "/".join(parts[:depth])
        # A quota on "/" can only be a namespace root's: the real root cgroup cannot have one.
        name = (base + ("/" + level_rel if level_rel else "")) or "/ (cgroup namespace root)"
        level_dir = mount_dir / level_rel if level_rel else mount_dir
        limit = read_quota(level_dir, _join(mount.mount_point, level_rel), name, notes)
        if limit is not None:
            limits.append(limit)
    return limits


def _join(mount_point: str, rel: str) -> str:
    return mount_point.rstrip("/") + "/" + rel if rel else mount_point


def _read_v1_quota(directory: Path, shown: str, name: str, notes: list[str]) -> CpuLimit | None:
    quota_text = _read(directory / "cpu.cfs_quota_us", notes, shown=f"{shown}/cpu.cfs_quota_us")
    if quota_text is None:
        return None
    quota = _parse_int(quota_text)
    if quota is None:
        notes.append(f"{shown}/cpu.cfs_quota_us holds {quota_text.strip()!r}, not a number; ignored")
        return None
    if quota <= 0:  # -1: no limit
        return None
    try:
        period_text: str | None = (directory / "cpu.cfs_period_us").read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError as error:
        notes.append(
            f"{shown}/cpu.cfs_period_us could not be read ({_reason(error)}); "
            f"the default period {DEFAULT_PERIOD_US} is used"
        )
        period_text = None
    if period_text is None:
        period = DEFAULT_PERIOD_US
        period_words = f"default period {DEFAULT_PERIOD_US}"
    else:
        parsed = _parse_int(period_text)
        if parsed is None or parsed <= 0:
            notes.append(
                f"{shown}/cpu.cfs_period_us holds {period_text.strip()!r}, not a positive number; "
                f"the quota {quota} there is ignored"
            )
            return None
        period = parsed
        period_words = f"cpu.cfs_period_us {period}"
    cpus = quota / period
    return CpuLimit(
        cpus, "cgroup-v1", f"cpu.cfs_quota_us {quota} / {period_words} in {name} -> {_cpus_words(cpus)}"
    )


def _read_v2_quota(directory: Path, shown: str, name: str, notes: list[str]) -> CpuLimit | None:
    path = directory / "cpu.max"
    # The root cgroup never has cpu.max, and a child lacks it when the cpu controller is not enabled
    # for it: both mean "no limit here", not a problem.
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        notes.append(f"{shown}/cpu.max could not be read ({_reason(error)}); ignored")
        return None
    tokens = text.split()
    if len(tokens) not in (1, 2):
        notes.append(f"{shown}/cpu.max holds {text.strip()!r}, not 'quota period'; ignored")
        return None
    if tokens[0] == "max":
        return None
    quota = _parse_int(tokens[0])
    if quota is None:
        notes.append(f"{shown}/cpu.max holds {text.strip()!r}: the quota is not a number; ignored")
        return None
    if quota <= 0:
        return None
    if len(tokens) == 1:
        period = DEFAULT_PERIOD_US
        words = f'cpu.max "{quota}" (period defaults to {DEFAULT_PERIOD_US})'
    else:
        parsed = _parse_int(tokens[1])
        if parsed is None or parsed <= 0:
            notes.append(
                f"{shown}/cpu.max holds {text.strip()!r}: the period is not a positive number; ignored"
            )
            return None
        period = parsed
        words = f'cpu.max "{quota} {period}"'
    cpus = quota / period
    return CpuLimit(cpus, "cgroup-v2", f"{words} in {name} -> {_cpus_words(cpus)}")


# --- reading and parsing ---------------------------------------------------------------------------


def _read(path: Path, notes: list[str], *, shown: str) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        notes.append(f"{shown} could not be read ({_reason(error)}); ignored")
        return None


def _reason(error: OSError) -> str:
    return "missing" if isinstance(error, FileNotFoundError) else (error.strerror or str(error))


def _parse_int(text: str) -> int | None:
    stripped = text.strip()
    digits = stripped[1:] if stripped.startswith("-") else stripped
    return int(stripped) if digits.isascii() and digits.isdigit() else None


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def format_cpus(cpus: float) -> str:
    """1.5 -> "1.5", 2.0 -> "2", 1/3 -> "0.333": for messages."""
    return f"{round(cpus, 3):g}"


def _cpus_words(cpus: float) -> str:
    return f"{format_cpus(cpus)} CPU" + ("" if cpus == 1 else "s")
