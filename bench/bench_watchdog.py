"""The cost of the run guards per update: the stall watchdog's heartbeat (with its monitor thread running)
and the non-finite guard's loss and gradient-norm checks, against the same training loop without them.

The loop is a real one on the CPU (forward, backward, gradient clipping, AdamW step, `loss.item()` as
F5-TTS's progress bar does), sized so that one update takes tens of milliseconds: smaller than any real
F5-TTS update, so the share is an upper bound. Blocks with and without the hooks alternate, with the
monitor thread running throughout, and each pair is compared (median of the ratios). On a busy machine that
end-to-end ratio carries a few per cent of noise either way, far more than the hooks cost, so the target is
judged on the hooks' own cost per update (timed alone, many calls) against the plain update of the same run.
Target: the hooks' cost < 1 % of the update; the paired ratio is shown beside it.

Run: python -m bench.bench_watchdog [--width 1024] [--updates 5] [--blocks 80]
"""

from __future__ import annotations

import argparse
import statistics
import time

TARGET_SHARE = 0.01


def make_step(width: int) -> tuple[object, object]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(4)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randn(64, width)
    return model, (optimizer, data)


def run_block(model: object, extra: object, updates: int, hooks: tuple[object, object] | None) -> float:
    """Seconds per update over `updates` updates, with the guards' hooks when `hooks` is given."""
    import torch

    optimizer, data = extra
    watchdog, guard = hooks if hooks is not None else (None, None)
    start = time.perf_counter()
    for update in range(1, updates + 1):
        loss = model(data).pow(2).mean()
        if guard is not None:
            guard.observe_loss(loss)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if guard is not None:
            guard.observe_grad_norm(norm)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # F5-TTS's progress bar
        if guard is not None:
            watchdog.beat(update)
            guard.end_update(update, None)
    return (time.perf_counter() - start) / updates


def hook_cost_us(calls: int = 20000) -> float:
    import torch

    from entrypoint.train.finite_guard import FiniteGuard
    from entrypoint.train.watchdog import Watchdog

    watchdog = Watchdog(timeout_s=None, min_s=900, heartbeat_path=None)
    guard = FiniteGuard(limit=5)
    loss, norm = torch.tensor(1.0), torch.tensor(2.0)
    start = time.perf_counter()
    for update in range(calls):
        guard.observe_loss(loss)
        guard.observe_grad_norm(norm)
        watchdog.beat(update)
        guard.end_update(update, None)
    cost = (time.perf_counter() - start) / calls * 1e6
    watchdog.stop()
    return cost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=5, help="updates per block")
    parser.add_argument("--blocks", type=int, default=80)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from entrypoint.train.finite_guard import FiniteGuard
    from entrypoint.train.watchdog import Watchdog

    model, extra = make_step(args.width)
    watchdog = Watchdog(timeout_s=None, min_s=900, heartbeat_path=None)
    hooks = (watchdog, FiniteGuard(limit=5))
    watchdog.start()  # the monitor thread runs through every block, as in training
    run_block(model, extra, 20, hooks)  # warm-up
    plain, guarded, paired = [], [], []
    for block in range(args.blocks):
        # Alternate which goes first, and compare each pair: a shared machine's drift cancels out.
        first, second = (None, hooks) if block % 2 else (hooks, None)
        a = run_block(model, extra, args.updates, first)
        b = run_block(model, extra, args.updates, second)
        without, with_ = (a, b) if first is None else (b, a)
        plain.append(without)
        guarded.append(with_)
        paired.append(with_ / without)
    watchdog.stop()
    plain_ms, guarded_ms = statistics.median(plain) * 1e3, statistics.median(guarded) * 1e3
    ratio = statistics.median(paired)
    hooks_us = hook_cost_us()
    print(
        f"update without guards: {plain_ms:.3f} ms, with: {guarded_ms:.3f} ms (medians of {args.blocks} blocks)"
    )
    share = hooks_us / (plain_ms * 1e3)
    print(
        f"paired ratio (median of with/without per block pair): {ratio:.4f} (this machine's noise included)"
    )
    print(
        f"the hooks alone: {hooks_us:.2f} us per update = {share:.3%} of the update (target < {TARGET_SHARE:.0%})"
    )
    return 0 if share < TARGET_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
