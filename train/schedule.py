"""Learning-rate schedules as pure functions of the global step (unit-tested)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    Per iteration (MAE's ``adjust_learning_rate`` evaluated at integer steps): at step s < warmup the
    lr is peak * s / warmup; afterwards min + (peak - min) * 0.5 * (1 + cos(pi * t)), t in [0, 1].
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
