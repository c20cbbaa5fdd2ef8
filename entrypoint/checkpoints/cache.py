"""Verdicts remembered between runs, so an unchanged multi-GB checkpoint is not read again.

An entry is keyed by what identifies one version of one file: device, inode, size, mtime_ns and ctime_ns
(ctime changes on any write, rename or chmod and cannot be set back by a user), plus what was asked
(quick or deep, the expectation, the preflight version). Anything different is a miss. A cache that cannot
be read or parsed is ignored with a warning; it is written atomically (temp file + rename) and only when
the caller saves it (never in a dry run).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint import __version__, naming
from entrypoint.checkpoints.verdict import Verdict
from entrypoint.durable import replace_text

CACHE_FILE_NAME = "verdict-cache.json"
FORMAT_VERSION = 2  # 2: verdicts carry their failure kind
# Entries kept for files not looked at in this run (moved away, renamed, on another volume now); every file
# this run asked about is kept, however many: the cache grows with the folder, not past it.
MAX_UNUSED_ENTRIES = 512


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        info = path.stat()  # follows a symlink: the identity is the file that would be read
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def key(self) -> str:
        return f"{self.device}:{self.inode}"


def request_key(load: bool, expect: Any) -> str:
    """What was asked of the validator; a verdict only answers the same question (or a weaker one)."""
    expectation = (
        "" if expect is None else f"{getattr(expect, 'preset', '')}/{getattr(expect, 'vocab_size', '')}"
    )
    return f"v{__version__}|{expectation}|load={int(load)}"


@dataclass
class VerdictCache:
    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    changed: bool = False
    used: set[str] = field(default_factory=set)  # keys asked about in this run

    @classmethod
    def for_output_dir(cls, output_dir: Path) -> VerdictCache:
        return cls.load(output_dir / naming.REPORT_DIR_NAME / CACHE_FILE_NAME)

    @classmethod
    def load(cls, path: Path) -> VerdictCache:
        cache = cls(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cache
        except (OSError, UnicodeDecodeError) as error:
            cache.warnings.append(f"verdict cache {path} cannot be read ({error}); ignored")
            return cache
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT_VERSION or not isinstance(data.get("entries"), dict):
                raise ValueError("unknown layout")
            cache.entries = {str(k): dict(v) for k, v in data["entries"].items()}
        except RecursionError:
            # Nested deeper than the parser's stack: no verdict cache of ours looks like that.
            cache.warnings.append(f"verdict cache {path} is not valid (nested too deep); ignored")
        except (ValueError, TypeError, AttributeError) as error:
            cache.warnings.append(f"verdict cache {path} is not valid ({error}); ignored")
        return cache

    def get(self, path: Path, *, deep: bool, load: bool = False, expect: Any = None) -> Verdict | None:
        """The remembered verdict for this exact version of the file, if it answers this question."""
        try:
            identity = FileIdentity.of(path)
        except OSError:
            return None
        self.used.add(identity.key())
        entry = self.entries.get(identity.key())
        if entry is None or entry.get("identity") != _identity_dict(identity):
            return None
        if entry.get("request") != request_key(load, expect):
            return None
        try:
            verdict = Verdict.from_dict(entry["verdict"])
        except (KeyError, TypeError, ValueError):
            return None
        # An invalid verdict answers any question; a valid one only one at least as thorough.
        if verdict.valid and deep and not entry.get("deep"):
            return None
        if str(path) != verdict.path:
            verdict = Verdict.from_dict({**verdict.to_dict(), "path": str(path)})
        return verdict

    def put(
        self, path: Path, verdict: Verdict, *, deep: bool, load: bool = False, expect: Any = None
    ) -> None:
        try:
            identity = FileIdentity.of(path)
        except OSError:
            return
        self.used.add(identity.key())
        previous = self.entries.get(identity.key())
        if (
            previous is not None
            and previous.get("deep")
            and not deep
            and previous.get("identity") == _identity_dict(identity)
            and previous.get("request") == request_key(load, expect)
        ):
            return  # keep the deeper answer for the same file version
        self.entries[identity.key()] = {
            "identity": _identity_dict(identity),
            "request": request_key(load, expect),
            "deep": deep,
            "verdict": verdict.to_dict(),
        }
        self.changed = True

    def save(self) -> str | None:
        """Write atomically; returns a warning instead of raising (a read-only volume is not fatal)."""
        if not self.changed:
            return None
        entries = self.entries
        unused = [key for key in entries if key not in self.used]
        if len(unused) > MAX_UNUSED_ENTRIES:
            dropped = set(unused[: len(unused) - MAX_UNUSED_ENTRIES])  # any of them: none is in use now
            entries = {key: value for key, value in entries.items() if key not in dropped}
        text = json.dumps(
            {"format": FORMAT_VERSION, "entries": entries}, indent=1, sort_keys=True, default=str
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_text(self.path, text + "\n")
        except OSError as error:
            return f"verdict cache {self.path} not written ({error.strerror or error})"
        self.changed = False
        return None


def _identity_dict(identity: FileIdentity) -> dict[str, int]:
    return {
        "device": identity.device,
        "inode": identity.inode,
        "size": identity.size,
        "mtime_ns": identity.mtime_ns,
        "ctime_ns": identity.ctime_ns,
    }


def cached(validator: Callable[..., Verdict], cache: VerdictCache) -> Callable[..., Verdict]:
    """`validator` with the same keywords, answering from `cache` when the file has not changed."""

    def check(
        path: Path, *, deep: bool = False, expect: Any = None, load: bool = False, **options: Any
    ) -> Verdict:
        hit = cache.get(path, deep=deep, load=load, expect=expect)
        if hit is not None:
            return hit
        verdict = validator(path, deep=deep, expect=expect, load=load, **options)
        cache.put(path, verdict, deep=deep, load=load, expect=expect)
        return verdict

    return check
