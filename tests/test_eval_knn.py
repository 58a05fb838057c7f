"""Weighted kNN: a hand-computed example, and agreement with a naive per-sample loop."""

from __future__ import annotations

import math

import pytest
import torch

from canbench.evaluation.knn import knn_classifier, knn_predict_scores, run_knn


def naive_knn_scores(train, train_y, test, num_classes, k, T):
    """One test sample at a time, Python loops: cosine sims, top-k, votes exp(sim/T) per class."""
    out = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, x in enumerate(test):
        sims = []
        for j, t in enumerate(train):
            cos = float(torch.dot(x.double(), t.double()) / (x.double().norm() * t.double().norm()))
            sims.append((cos, j))
        sims.sort(key=lambda s: -s[0])
        for cos, j in sims[: min(k, len(train))]:
            out[i, int(train_y[j])] += math.exp(cos / T)
    return out


def test_hand_computed_example():
    # train points on the unit circle at 0, 90 and 180 degrees with labels 0, 1, 1
    train = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    train_y = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 1.0]])  # 45 degrees: cos = 1/sqrt2 to the first two, -1/sqrt2 to the third
    s = 1 / math.sqrt(2)
    scores = knn_predict_scores(train, train_y, test, num_classes=2, k=2, temperature=0.5)
    # k = 2: neighbours are train 0 (label 0) and train 1 (label 1), both weight exp(s / 0.5)
    torch.testing.assert_close(scores, torch.tensor([[math.exp(2 * s), math.exp(2 * s)]]))
    scores3 = knn_predict_scores(train, train_y, test, num_classes=2, k=3, temperature=0.5)
    torch.testing.assert_close(scores3, torch.tensor([[math.exp(2 * s), math.exp(2 * s) + math.exp(-2 * s)]]))
    res = knn_classifier(train, train_y, test, torch.tensor([1]), k=3, temperature=0.5)
    assert res["top1"] == 100.0  # label 1 wins by exp(-2s)


@pytest.mark.parametrize("n_test,num_chunks", [(37, 100), (1, 100), (250, 7), (5, 5)])
def test_matches_naive_loop_for_any_chunking(n_test, num_chunks):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(n_test, 8, generator=g)
    fast = knn_predict_scores(train, train_y, test, 4, k=20, temperature=0.07, num_chunks=num_chunks)
    ref = naive_knn_scores(train, train_y, test, 4, k=20, T=0.07)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-3)
    test_y = torch.randint(0, 4, (n_test,), generator=g)
    res = knn_classifier(train, train_y, test, test_y, num_classes=4, num_chunks=num_chunks)
    expect = 100.0 * (ref.argmax(1) == test_y).double().mean().item()
    assert res["top1"] == pytest.approx(expect)


def test_k_larger_than_train_set_and_bad_inputs():
    train = torch.eye(3)
    scores = knn_predict_scores(train, torch.tensor([0, 1, 2]), torch.eye(3), 3, k=20, temperature=0.07)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="train labels outside"):
        knn_predict_scores(train, torch.tensor([0, 1, 5]), torch.eye(3), 3)
    with pytest.raises(ValueError, match="feature shapes"):
        knn_predict_scores(train, torch.tensor([0, 1, 2]), torch.ones(2, 4), 3)


def test_run_knn_suite_on_tiny_encoder():
    import timm
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, num_classes=0,
                            global_pool="avg", class_token=False, fc_norm=False)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 3
    imgs = (torch.rand(30, 3, 16, 16, generator=g) * 50).to(torch.uint8)
    imgs[torch.arange(30), y] += 200  # class = dominant colour channel
    ds = TensorDataset(imgs, y)
    out = run_knn(enc, ds, ds, img_size=16, crop_pct=1.0, k=5, batch_size=8)
    assert out["metrics"]["top1"] == 100.0 and out["metrics"]["n_train"] == 30
    fp = out["fingerprint_fields"]
    assert fp["k"] == 5 and fp["temperature"] == 0.07 and fp["sampler_padding"] == "none"
