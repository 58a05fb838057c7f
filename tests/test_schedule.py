"""The lr schedule is a pure function of the step."""

from __future__ import annotations

import math

import pytest

from canbench.train.schedule import warmup_cosine


def test_warmup_is_linear_and_cosine_ends_at_min():
    peak, total, warm = 1.0, 100, 10
    assert warmup_cosine(0, total, warm, peak) == 0.0
    assert warmup_cosine(5, total, warm, peak) == pytest.approx(0.5)
    assert warmup_cosine(10, total, warm, peak) == pytest.approx(1.0)
    mid = 10 + 45
    assert warmup_cosine(mid, total, warm, peak) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warm, peak, min_lr=0.1) == pytest.approx(0.1)
    # naive reference of MAE's adjust_learning_rate
    for s in range(10, 100):
        ref = 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        assert warmup_cosine(s, total, warm, peak) == pytest.approx(ref)


def test_no_warmup():
    assert warmup_cosine(0, 10, 0, 2.0) == pytest.approx(2.0)
