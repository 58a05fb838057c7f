"""LARS: two steps against hand-computed updates (trust ratio, weight decay, momentum, 1-D exclusion)."""

from __future__ import annotations

import pytest
import torch

from canbench.evaluation.lars import LARS


def test_two_steps_match_hand_computation():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))  # 1-D: no wd, no trust scaling
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([2.0, 0.0])
    opt.step()
    # w: g = grad + 0.1 w = [0.3, 1.4]; ||g|| = sqrt(0.09 + 1.96) = sqrt(2.05)
    # q = 0.001 * 5 / sqrt(2.05); mu = q g; w <- w - 0.5 mu
    q = 0.001 * 5 / 2.05 ** 0.5
    mu_w = torch.tensor([[0.3, 1.4]]) * q
    expect_w = torch.tensor([[3.0, 4.0]]) - 0.5 * mu_w
    torch.testing.assert_close(w.data, expect_w)
    # b: mu = grad; b <- b - 0.5 grad
    torch.testing.assert_close(b.data, torch.tensor([0.0, -1.0]))
    # second step: momentum accumulates the new scaled update
    w_prev = w.data.clone()
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([0.0, 2.0])
    opt.step()
    g2 = torch.tensor([[1.0, 0.0]]) + 0.1 * w_prev
    q2 = 0.001 * w_prev.norm() / g2.norm()
    mu_w2 = 0.9 * mu_w + q2 * g2
    torch.testing.assert_close(w.data, w_prev - 0.5 * mu_w2)
    torch.testing.assert_close(b.data, torch.tensor([0.0, -1.0]) - 0.5 * (0.9 * torch.tensor([2.0, 0.0])
                                                                          + torch.tensor([0.0, 2.0])))


def test_zero_norm_cases_use_ratio_one_and_missing_grads_skip():
    w = torch.nn.Parameter(torch.zeros(2, 2))  # ||w|| = 0 -> q = 1
    skip = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([w, skip], lr=1.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.data, -torch.ones(2, 2))
    torch.testing.assert_close(skip.data, torch.ones(2, 2))


def test_invalid_hyper_parameters():
    with pytest.raises(ValueError, match="momentum"):
        LARS([torch.nn.Parameter(torch.ones(1))], lr=0.1, momentum=1.5)
