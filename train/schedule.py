"""The learning-rate schedule of every training loop in canbench, a pure function of progress (unit-tested).

Pretraining evaluates it at integer steps (``t = step``, ``total = total_steps``, ``warmup = warmup_steps``);
the linear probe and finetuning at fractional epochs (``t = step / steps_per_epoch``, ``total = epochs``),
as MAE's ``util/lr_sched.adjust_learning_rate`` does.
"""

from __future__ import annotations

import math


def warmup_cosine(t: float, total: float, warmup: float, peak_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup``, then cosine decay to ``min_lr`` at ``total``.

    t < warmup: peak * t / warmup; afterwards min + (peak - min) * 0.5 * (1 + cos(pi * f)) with
    f = (t - warmup) / (total - warmup) clamped to [0, 1] (f = 1 when there is nothing left to decay over).
    """
    if t < warmup:
        return peak_lr * t / warmup
    span = total - warmup
    frac = 1.0 if span <= 0 else min(1.0, (t - warmup) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


__all__ = ["warmup_cosine"]
