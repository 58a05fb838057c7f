"""Few-shot least squares: solver vs a naive closed form, nested subsets, sanity on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest

from canbench.evaluation.fewshot import (
    LinearHeadConfig,
    accuracy,
    actual_shots,
    fewshot_eval,
    fewshot_subsets,
    lsr_fit,
    lsr_solve,
    run_fewshot,
    sample_fewshot_indices,
)


def naive_lsr_predict(x_train, y_train, x_test, num_classes, l2=2.0 ** 10):
    """big_vision fewshot_lsr written out with an explicit inverse (no eigh, no branch)."""
    mean = x_train.mean(0)
    std = x_train.std(0) + 1e-5
    xs = np.hstack([(x_train - mean) / std, np.full((len(x_train), 1), 100.0)])
    xt = np.hstack([(x_test - mean) / std, np.full((len(x_test), 1), 100.0)])
    y = -np.ones((len(y_train), num_classes))
    y[np.arange(len(y_train)), y_train] = 1.0
    w = np.linalg.inv(xs.T @ xs + l2 * np.eye(xs.shape[1])) @ xs.T @ y
    return xt @ w


@pytest.mark.parametrize("n,d", [(40, 6), (6, 40)])  # primal (N >= D) and dual (N < D) regimes
def test_solver_primal_dual_and_naive_agree(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d + 1))
    y = rng.normal(size=(n, 3))
    primal = lsr_solve(x, y, 7.0, "primal")
    dual = lsr_solve(x, y, 7.0, "dual")
    naive = np.linalg.inv(x.T @ x + 7.0 * np.eye(d + 1)) @ x.T @ y
    np.testing.assert_allclose(primal, naive, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dual, naive, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(lsr_solve(x, y, 7.0), naive, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("n,d", [(30, 5), (5, 30)])
def test_fit_matches_naive_closed_form_scores(n, d):
    rng = np.random.default_rng(1)
    x, x_test = rng.normal(size=(n, d)) * 3 + 1, rng.normal(size=(11, d))
    y = rng.integers(0, 4, n)
    y[:4] = np.arange(4)
    model = lsr_fit(x, y, 4)
    np.testing.assert_allclose(model.scores(x_test), naive_lsr_predict(x, y, x_test, 4), rtol=1e-6, atol=1e-8)


def test_sampling_is_nested_per_class_and_seeded():
    labels = np.repeat(np.arange(5), 30)
    np.random.default_rng(9).shuffle(labels)
    subs = fewshot_subsets(labels, shots=(1, 5, 10, 25), seeds=(0, 1, 2))
    for seed in (0, 1, 2):
        for small, big in ((1, 5), (5, 10), (10, 25)):
            a, b = subs[small][seed], subs[big][seed]
            for c in range(5):
                ia, ib = a[labels[a] == c], b[labels[b] == c]
                assert len(ia) == small and len(ib) == big
                assert list(ib[:small]) == list(ia)  # same per-class permutation prefix
    # the documented rule, spelled out: per class (ascending), default_rng(seed).permutation, first k
    rng = np.random.default_rng(2)
    expect = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:5] for c in range(5)])
    assert list(sample_fewshot_indices(labels, 5, 2)) == list(expect)
    assert list(subs[5][0]) != list(subs[5][1])
    # a class with fewer images than shots gives what it has (big_vision's slicing), and that is recorded
    small = np.array([0, 1, 1, 1, 2, 2])
    idx = sample_fewshot_indices(small, 2, 0)
    assert sorted(small[idx].tolist()) == [0, 1, 1, 2, 2] and actual_shots(small, idx) == 1


def _separable(n_per_class=40, classes=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 6
    y = np.repeat(np.arange(classes), n_per_class)
    return centers[y] + rng.normal(size=(len(y), dim)), y


def test_near_perfect_on_separable_and_chance_on_random_labels():
    x, y = _separable()
    xt, yt = _separable(seed=0)[0] + np.random.default_rng(5).normal(size=x.shape) * 0.1, y
    res = fewshot_eval(x, y, xt, yt, shots=(1, 5, 25), seeds=(0, 1, 2))
    assert res["5shot_mean"] > 98 and res["25shot_mean"] > 98
    assert set(res) >= {"1shot_seed0", "1shot_seed2", "1shot_std", "25shot_std"}
    rng = np.random.default_rng(3)
    xr, yr = rng.normal(size=(2000, 16)), rng.integers(0, 5, 2000)
    xtr, ytr = rng.normal(size=(2000, 16)), rng.integers(0, 5, 2000)
    chance = fewshot_eval(xr, yr, xtr, ytr, shots=(10, 25), seeds=(0, 1, 2))
    assert abs(chance["25shot_mean"] - 20.0) < 4.0 and abs(chance["10shot_mean"] - 20.0) < 4.0


def test_trained_linear_head_option_learns_separable():
    x, y = _separable(classes=3, dim=8)
    res = fewshot_eval(x, y, x, y, shots=(5,), seeds=(0,), head="linear",
                       linear_cfg=LinearHeadConfig(steps=100, lr=0.01))
    assert res["5shot_mean"] > 95


def test_accuracy_helper():
    assert accuracy(np.array([[0.1, 0.9], [2.0, 1.0]]), np.array([1, 1])) == 50.0


def test_run_fewshot_embeds_only_the_union_of_subsets():
    import timm
    import torch
    from torch.utils.data import Dataset

    class Counting(Dataset):
        """Colour-coded uint8 images; records which indices were read."""

        def __init__(self, n):
            g = torch.Generator().manual_seed(n)
            self.targets = [i % 3 for i in range(n)]
            self.imgs = (torch.rand(n, 3, 16, 16, generator=g) * 50).to(torch.uint8)
            for i, t in enumerate(self.targets):
                self.imgs[i, t] += 200
            self.read = set()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            self.read.add(i)
            return self.imgs[i], self.targets[i]

    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, num_classes=0,
                            global_pool="avg", class_token=False, fc_norm=False)
    train, test = Counting(60), Counting(30)
    out = run_fewshot(enc, train, test, img_size=16, crop_pct=1.0, shots=(1, 5), seeds=(0, 1))
    subs = fewshot_subsets(np.asarray(train.targets), (1, 5), (0, 1))
    union = set(np.concatenate([subs[5][0], subs[5][1]]).tolist())
    assert train.read == union  # 1-shot subsets are nested in the 5-shot ones
    assert out["metrics"]["5shot_mean"] > 90
    assert out["fingerprint_fields"]["seeds"] == [0, 1] and out["fingerprint_fields"]["l2"] == 1024.0
