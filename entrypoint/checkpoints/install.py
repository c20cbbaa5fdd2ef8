"""Make the trainer load the chosen checkpoint.

Our own trainer ("safe" mode) is given the chosen path explicitly: no file is touched. F5-TTS's stock trainer
("stock" mode) picks by name (see f5_rule.py), so the chosen file must be the one its rule lands on in its
checkpoint folder. Bad files are already quarantined by then; what is left is placing a chosen file that
lives elsewhere (a backup, PRETRAINED_CHECKPOINT) or that a stray name would shadow.

Placements, tried in this order; the first one F5-TTS's rule picks unambiguously is used:
- training checkpoint of update U: `model_<U>.pt`, hard link when on the same file system. Safe because the
  stock trainer never writes an existing numbered name (its saves are numbered above the update it resumed
  from) and only unlinks old ones;
- training checkpoint: `model_last.pt` as a real copy, never a hard link: the stock trainer rewrites
  `model_last.pt` in place (torch.save truncates the file it opens), which through a hard link would destroy
  the backup it came from;
- pretrained weights: `pretrained_<name>` (the name F5-TTS's stock CLI copies PRETRAINED_CHECKPOINT to, so its
  `if not isfile` copy is skipped), hard link or copy: the trainer never writes `pretrained_*` names;
- pretrained weights when other valid `pretrained_*` files make F5-TTS's choice depend on listing order:
  `model_0.pt` / `model_0.safetensors`, which its rule prefers over any `pretrained_*`.
A copy goes to a temp name, is fsynced, renamed without replacing anything, and the folder fsynced.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from entrypoint import naming
from entrypoint.checkpoints.f5_rule import F5Choice, f5_choice
from entrypoint.checkpoints.verdict import FORMAT_SAFETENSORS, KIND_TRAINING, Verdict
from entrypoint.durable import copy_file
from entrypoint.files import same_file

COPY_MARGIN_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Placement:
    name: str
    link_allowed: bool


def _extension(verdict: Verdict) -> str:
    return ".safetensors" if verdict.format == FORMAT_SAFETENSORS else ".pt"


def pretrained_copy_name(source: Path, verdict: Verdict) -> str:
    """The name F5-TTS's stock CLI gives its copy of a pretrained file, with a loadable ending."""
    name = (
        source.name
        if source.name.startswith(naming.PRETRAINED_PREFIX)
        else naming.PRETRAINED_PREFIX + source.name
    )
    if not name.endswith((".pt", ".safetensors")):
        # F5-TTS only considers these two endings, and picks its loader by them.
        stem, dot, _ending = name.rpartition(".")
        name = (stem if dot else name) + _extension(verdict)
    return name


def placements(chosen: Path, verdict: Verdict) -> list[Placement]:
    if verdict.kind == KIND_TRAINING and verdict.update is not None and verdict.format != FORMAT_SAFETENSORS:
        return [Placement(f"model_{verdict.update}.pt", True), Placement(naming.LAST_NAME, False)]
    return [
        Placement(pretrained_copy_name(chosen, verdict), True),
        Placement(f"model_0{_extension(verdict)}", True),
    ]


def plan_stock(folder: Path, chosen: Path, verdict: Verdict, names: Iterable[str]) -> tuple[str | None, str]:
    """For a folder listing (after quarantine), the entry F5-TTS must load for `chosen`, and how to get it.

    Returns (name, how) with how "in place" (nothing to do), "link", "copy", or (None, reason) when no
    placement works.
    """
    listing = list(names)
    current = f5_choice(listing)
    if current.name is not None and not current.ambiguous and same_file(folder / current.name, chosen):
        return current.name, "in place"
    blocked: list[str] = []
    for placement in placements(chosen, verdict):
        target = folder / placement.name
        if placement.name in listing:
            if same_file(target, chosen) and not (
                placement.name == naming.LAST_NAME and chosen.parent != folder
            ):
                simulated = listing
            else:
                blocked.append(f"{placement.name} exists")
                continue
        else:
            simulated = [*listing, placement.name]
        result = f5_choice(simulated)
        if result.name == placement.name and not result.ambiguous and not result.error:
            if placement.name in listing:
                return placement.name, "in place"
            return placement.name, _method(folder, chosen, placement)
        blocked.append(_why_not(result, placement.name))
    return None, "; ".join(blocked)


def _why_not(result: F5Choice, name: str) -> str:
    if result.error:
        return f"as {name}: {result.error}"
    if result.ambiguous:
        return f"as {name}: the choice would depend on listing order ({', '.join(result.ambiguous)})"
    return f"as {name}: F5-TTS would still load {result.name}"


def _method(folder: Path, chosen: Path, placement: Placement) -> str:
    if not placement.link_allowed:
        return "copy"
    try:
        return "link" if chosen.stat().st_dev == folder.stat().st_dev else "copy"
    except OSError:
        return "copy"


def atomic_copy(source: Path, target: Path) -> None:
    """A durable copy (temp file, fsync, rename, folder fsync) that never replaces a file, after a space
    check with a margin: a copy that cannot fit must not fill the disk the trainer saves to."""
    size = source.stat().st_size
    free = shutil.disk_usage(target.parent).free
    if free < size + COPY_MARGIN_BYTES:
        raise OSError(errno.ENOSPC, f"{free / 1e9:.1f} GB free, {size / 1e9:.1f} GB needed")
    copy_file(source, target, replace=False)
