"""The non-finite guard: a loss or gradient norm that stays NaN/Inf stops training, and such a state is never
saved over a checkpoint or a backup.

The trainer reports each update's loss and gradient norm (`observe_loss`, `observe_grad_norm`) and closes
the update with `end_update`. A single non-finite gradient norm is normal with fp16 (the gradient scaler
skips that step and lowers its scale); NON_FINITE_LIMIT of them in a row is not. A state is not saved
while its weights are NaN/Inf (`state_is_finite`) or while the updates are non-finite (`in_bad_streak`).
The values are kept as tensors and read when the update closes: by then F5-TTS's own `loss.item()` has
synchronised with the GPU, so the guard adds no synchronisation point of its own inside the update.
Torch-free until a tensor is handed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class NonFiniteStop(Exception):
    """NON_FINITE_LIMIT updates in a row had a non-finite loss or gradient norm."""

    update: int  # the update reached (not saved)
    first_update: int  # the first update of the run of non-finite ones
    count: int
    what: str  # "loss", "gradient norm" or both
    batch_texts: tuple[str, ...]  # the texts of the batch that started it

    def __str__(self) -> str:
        return (
            f"the {self.what} was NaN/Inf for {self.count} updates in a row "
            f"(updates {self.first_update}-{self.update})"
        )


def _as_float(value: Any) -> float:
    if hasattr(value, "detach"):
        value = value.detach().float().item()
    return float(value)


def describe_texts(batch: Any, limit: int = 3, width: int = 50) -> tuple[str, ...]:
    """The first texts of a batch as short strings (F5-TTS batches hold strings or lists of tokens)."""
    texts = batch.get("text") if isinstance(batch, dict) else None
    if not isinstance(texts, Sequence):
        return ()
    shown = []
    for text in list(texts)[:limit]:
        line = "".join(str(token) for token in text) if isinstance(text, list | tuple) else str(text)
        shown.append(line if len(line) <= width else line[: width - 1] + "…")
    return tuple(shown)


class FiniteGuard:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: never stop (a non-finite state is still not saved)
        self.consecutive = 0
        self.first_update = 0
        self.first_texts: tuple[str, ...] = ()
        self.bad_kinds: set[str] = set()
        self._loss_bad = False
        self._norm_bad = False
        self._pending: list[tuple[str, Any]] = []  # values of the update in progress, not read yet

    def observe_loss(self, loss: Any) -> None:
        self._pending.append(("loss", loss.detach() if hasattr(loss, "detach") else loss))

    def observe_grad_norm(self, norm: Any) -> None:
        self._pending.append(("norm", norm.detach() if hasattr(norm, "detach") else norm))

    def _read_pending(self) -> None:
        for kind, value in self._pending:
            if not math.isfinite(_as_float(value)):
                if kind == "loss":
                    self._loss_bad = True
                else:
                    self._norm_bad = True
        self._pending.clear()

    @property
    def update_was_bad(self) -> bool:
        self._read_pending()
        return self._loss_bad or self._norm_bad

    @property
    def in_bad_streak(self) -> bool:
        """The update in progress, or the last one closed, had a non-finite loss or gradient norm."""
        return self.update_was_bad or self.consecutive > 0

    def end_update(self, update: int, batch: Any = None) -> NonFiniteStop | None:
        """Close `update` (1-based count reached); returns the stop when the limit is reached."""
        if not self.update_was_bad:
            self.consecutive = 0
            self.bad_kinds.clear()
            return None
        if self.consecutive == 0:
            self.first_update = update
            self.first_texts = describe_texts(batch)
        self.consecutive += 1
        if self._loss_bad:
            self.bad_kinds.add("loss")
        if self._norm_bad:
            self.bad_kinds.add("gradient norm")
        self._loss_bad = self._norm_bad = False
        if self.limit and self.consecutive >= self.limit:
            return NonFiniteStop(
                update=update,
                first_update=self.first_update,
                count=self.consecutive,
                what=" and ".join(sorted(self.bad_kinds)),
                batch_texts=self.first_texts,
            )
        return None


def state_is_finite(tensors: Iterable[Any]) -> bool:
    """True when every floating-point tensor is finite: one reduction per tensor, one sync at the end."""
    import torch

    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True


def fix_line(stop: NonFiniteStop, mixed_precision: str, learning_rate: float) -> str:
    """What to do, in the order most likely to help."""
    hints = []
    if mixed_precision == "fp16":
        hints.append("set MIXED_PRECISION=bf16 (fp16 overflows)")
    hints.append(f"lower LEARNING_RATE (now {learning_rate:g}) or raise WARMUP_UPDATES")
    if stop.batch_texts:
        shown = "; ".join(repr(text) for text in stop.batch_texts)
        hints.append(f"if it started with one batch, check its clips (texts: {shown})")
    return ", ".join(hints) + "; the next start resumes from the last good model_last.pt"
