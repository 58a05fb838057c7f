"""Per-iteration learning-rate schedules of the evaluation suites, as pure functions of the step."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, steps_per_epoch: int, epochs: float, warmup_epochs: float, peak_lr: float,
                     min_lr: float = 0.0) -> float:
    """MAE ``util/lr_sched.adjust_learning_rate`` at fractional epoch e = step / steps_per_epoch.

    e < warmup: peak * e / warmup; else min + (peak - min) * 0.5 * (1 + cos(pi * (e - warmup) /
    (epochs - warmup))), clamped at the end of the schedule.
    """
    if steps_per_epoch < 1 or epochs <= 0 or not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"invalid schedule: steps_per_epoch={steps_per_epoch}, epochs={epochs}, "
                         f"warmup_epochs={warmup_epochs}")
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    span = epochs - warmup_epochs
    t = 1.0 if span <= 0 else min(1.0, (epoch - warmup_epochs) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule used throughout: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256
