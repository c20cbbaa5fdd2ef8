"""F5-TTS's own choice of the checkpoint to resume from, re-implemented without torch.

The stock trainer (`f5_tts.model.trainer.Trainer.load_checkpoint`, f5-tts 1.1.22) looks only at the names in
its checkpoint folder, in `os.listdir` order, and never checks a file before `torch.load`:

0. no folder, or no name ending in .pt/.safetensors: no load, training starts at update 0;
1. `model_last.pt` whenever that name exists (a file, a directory or a dangling link alike);
2. else, among names starting with `model_` and ending in .pt/.safetensors, the one whose digits, joined,
   form the largest number (`sorted(key=int(digits))[-1]`, so among equal numbers the last in listing order;
   a `model_*` name without digits makes it crash with ValueError);
3. else the first name starting with `pretrained_` and ending in .pt/.safetensors in listing order (a name
   ending in .pt/.safetensors that fits neither pattern makes it crash with StopIteration).

The preflight arranges the folder so that this rule lands on the checkpoint it chose; tests compare this
module with the real trainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from entrypoint.naming import LAST_NAME, LOADABLE_ENDINGS


@dataclass(frozen=True)
class F5Choice:
    """What F5-TTS's stock `load_checkpoint` would do with one folder listing."""

    name: str | None  # the entry it would load; None: nothing is loaded (or it crashes, see `error`)
    rule: str  # "empty" | "last" | "numbered" | "pretrained" | "error"
    error: str = ""  # why it would crash before loading anything
    ambiguous: tuple[str, ...] = ()  # other names the listing order could have made it load instead

    @property
    def starts_fresh(self) -> bool:
        return self.rule == "empty"


def _digits(name: str) -> int | None:
    joined = "".join(filter(str.isdigit, name))
    return int(joined) if joined else None


def f5_choice(names: Sequence[str]) -> F5Choice:
    """Apply F5-TTS's rule to folder entry names given in listing order."""
    if not any(name.endswith(LOADABLE_ENDINGS) for name in names):
        return F5Choice(None, "empty")
    if LAST_NAME in names:
        return F5Choice(LAST_NAME, "last")
    loadable = [n for n in names if n.startswith(("model_", "pretrained_")) and n.endswith(LOADABLE_ENDINGS)]
    numbered = [n for n in loadable if n.startswith("model_") and n != LAST_NAME]
    if numbered:
        keys = {name: _digits(name) for name in numbered}
        without = sorted(name for name, key in keys.items() if key is None)
        if without:
            return F5Choice(
                None, "error", f"F5-TTS cannot order {without[0]!r}: a model_* name without digits"
            )
        best = max(keys.values())
        tied = [name for name in numbered if keys[name] == best]
        # sorted() is stable: among equal numbers the last one in listing order wins.
        return F5Choice(tied[-1], "numbered", ambiguous=tuple(tied[:-1]))
    pretrained = [n for n in loadable if n.startswith("pretrained_")]
    if not pretrained:
        strays = sorted(n for n in names if n.endswith(LOADABLE_ENDINGS))
        return F5Choice(
            None,
            "error",
            f"F5-TTS finds {strays[0]!r} but no model_*/pretrained_* name to load (StopIteration)",
        )
    return F5Choice(pretrained[0], "pretrained", ambiguous=tuple(pretrained[1:]))


def f5_choice_in(folder: Path) -> F5Choice:
    """Apply F5-TTS's rule to a real folder, as the stock trainer would see it now."""
    try:
        names = os.listdir(folder)
    except OSError:
        return F5Choice(None, "empty")
    return f5_choice(names)
