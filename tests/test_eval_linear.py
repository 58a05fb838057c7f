"""Linear probe: schedule, head, config, accuracy on separable / random-label features, both modes."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Blobs

from canbench.config import ConfigError, scaled_lr
from canbench.evaluation.linear import LinearHead, linear_probe_on_features, run_linear
from canbench.evaluation.recipes import linear_config
from canbench.train.schedule import warmup_cosine


def test_schedule_is_mae_per_iteration_warmup_cosine():
    """The suites call the shared schedule at fractional epochs: t = step / steps_per_epoch."""
    spe, epochs, warm, peak = 10, 20, 5, 2.0
    assert warmup_cosine(0 / spe, epochs, warm, peak) == 0.0
    assert warmup_cosine(25 / spe, epochs, warm, peak) == pytest.approx(peak * 2.5 / 5)  # mid-warmup
    assert warmup_cosine(50 / spe, epochs, warm, peak) == pytest.approx(peak)
    # halfway through the cosine part: epoch 12.5 -> t = 0.5 -> peak / 2
    assert warmup_cosine(125 / spe, epochs, warm, peak) == pytest.approx(peak / 2)
    assert warmup_cosine(200 / spe, epochs, warm, peak) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(999 / spe, epochs, warm, peak, min_lr=0.1) == pytest.approx(0.1)
    e = 7.3
    expect = 0.5 * (1 + math.cos(math.pi * (e - warm) / (epochs - warm))) * peak
    assert warmup_cosine(73 / spe, epochs, warm, peak) == pytest.approx(expect)
    assert scaled_lr(0.1, 16384) == pytest.approx(6.4)


def test_head_init_and_shapes():
    torch.manual_seed(0)
    head = LinearHead(2000, 1000)
    assert not head.bn.affine and head.bn.eps == 1e-6
    # MAE / timm trunc_normal_(std=0.01) truncates at the absolute bounds +-2, i.e. not at all here
    assert float(head.fc.weight.detach().std()) == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(head.fc.bias) == 0
    assert head(torch.randn(4, 2000)).shape == (4, 1000)


def test_config_defaults_scales_and_errors():
    cfg = linear_config()
    assert (cfg.epochs, cfg.batch_size, cfg.base_lr, cfg.warmup_epochs, cfg.mode) == (100, 16384, 0.1, 10, "full")
    assert linear_config("mae").epochs == 90
    assert linear_config("small").mode == "cached_features"
    with pytest.raises(ConfigError, match="unknown linear-probe key 'epoch'"):
        linear_config(epoch=3)
    with pytest.raises(ConfigError, match="linear.mode"):
        linear_config(mode="fast")


def _features(n_per_class=64, classes=4, dim=32, seed=0, random_labels=False):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(len(y), dim, generator=g)
    if random_labels:
        y = torch.randint(0, classes, (len(y),), generator=g)
    return x, y


def test_separable_features_near_perfect():
    xtr, ytr = _features(seed=0)
    xte, yte = _features(seed=0)
    xte = xte + 0.05 * torch.randn_like(xte)
    cfg = linear_config("smoke", batch_size=32, epochs=5, warmup_epochs=1, base_lr=32.0)
    out = linear_probe_on_features(xtr, ytr, xte, yte, cfg)
    assert out["metrics"]["top1"] > 97
    assert out["metrics"]["top1_best"] >= out["metrics"]["top1"]
    assert out["history"][-1]["epoch"] == 5 and out["history"][-1]["lr"] < 0.1 * 32 * 32 / 256


def test_random_labels_give_chance():
    xtr, ytr = _features(n_per_class=200, random_labels=True, seed=1)
    xte, yte = _features(n_per_class=200, random_labels=True, seed=2)
    cfg = linear_config("smoke", batch_size=64, epochs=2, base_lr=16.0)
    acc = linear_probe_on_features(xtr, ytr, xte, yte, cfg)["metrics"]["top1"]
    assert abs(acc - 25.0) < 6.0


def test_batch_larger_than_train_set_is_an_error():
    x, y = _features(n_per_class=4)
    with pytest.raises(ConfigError, match="batch_size=64 exceeds the 16"):
        linear_probe_on_features(x, y, x, y, linear_config("smoke"))


@pytest.mark.parametrize("mode", ["cached_features", "full"])
def test_run_linear_end_to_end_on_tiny_encoder(mode):
    import timm

    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0,
                            global_pool="avg", class_token=False, fc_norm=False)
    epochs = 15 if mode == "cached_features" else 2  # the cached mode is cheap: train it to convergence
    cfg = linear_config("smoke", mode=mode, batch_size=16, epochs=epochs, base_lr=64.0, eval_batch_size=32,
                        eval_every=5)
    out = run_linear(enc, Blobs(48, 0), Blobs(24, 1), cfg)
    m, fp = out["metrics"], out["fingerprint_fields"]
    assert 0 <= m["top1"] <= 100 and m["steps"] == 3 * epochs
    assert [h["epoch"] for h in out["history"]] == ([5, 10, 15] if epochs == 15 else [2])
    assert fp["mode"] == mode and fp["pooling"] == "avg" and fp["head_bn"] is True
    assert fp["effective_batch"] == 16 and fp["sampler_padding"] == "none"
    assert fp["resize_crop"] == "resize32_bicubic_center32"
    if mode == "cached_features":
        assert m["top1"] > 90  # colour blobs are linearly separable in any random ViT's features
    assert all(p.requires_grad for p in enc.parameters())  # frozen during the probe only
