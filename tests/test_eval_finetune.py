"""Finetuning: classifier built from the encoder (MAE weight rule), optimizer groups, a tiny training run,
and the finetuned checkpoint round trip."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import Blobs

from canbench.config import ConfigError
from canbench.evaluation import finetune as ft
from canbench.evaluation.classifier import (
    classifier_from_encoder,
    classifier_spec,
    load_encoder_weights,
    load_finetuned,
    save_finetuned,
)
from canbench.evaluation.recipes import finetune_config


def timm_encoder(class_token=False, depth=2):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=depth, num_classes=0,
                             global_pool="avg", class_token=class_token, fc_norm=False)


def shared_encoder(class_token=False):
    from canbench.methods.backbone import ViTEncoder

    torch.manual_seed(0)
    return ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=class_token)


@pytest.mark.parametrize("make", [timm_encoder, shared_encoder])
@pytest.mark.parametrize("class_token", [False, True])
def test_classifier_carries_encoder_weights_without_final_norm(make, class_token):
    enc = make(class_token=class_token).eval()
    clf, spec = classifier_from_encoder(enc, num_classes=7, drop_path_rate=0.1)
    clf.eval()
    kw = spec["model_kwargs"]
    assert kw["global_pool"] == "avg" and kw["fc_norm"] is True and kw["class_token"] is class_token
    assert kw["drop_path_rate"] == 0.1 and kw["num_classes"] == 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        enc.norm = torch.nn.Identity()  # MAE: the final norm is dropped, fc_norm comes after pooling
        ref_tokens = enc.forward_features(x)
        tokens = clf.forward_features(x)
        torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
        pooled = ref_tokens[:, int(class_token):].mean(1)
        logits = clf.head(torch.nn.functional.layer_norm(pooled, (pooled.shape[1],), eps=1e-6))
        torch.testing.assert_close(clf(x), logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(clf.fc_norm.weight, torch.ones_like(clf.fc_norm.weight))
    assert float(clf.head.weight.detach().std()) < 1e-4 and torch.count_nonzero(clf.head.bias) == 0


def test_encoder_key_mismatch_is_named():
    enc = timm_encoder()
    clf, _ = classifier_from_encoder(enc, 3)
    sd = enc.state_dict()
    sd["blocks.0.attn.qkv.weightx"] = sd.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(KeyError, match=r"qkv\.weightx.*missing keys \['blocks\.0\.attn\.qkv\.weight'\]"):
        load_encoder_weights(clf, sd)


def test_optimizer_uses_layer_decay_groups():
    enc = timm_encoder(depth=2)
    clf, _ = classifier_from_encoder(enc, 3)
    opt = ft.finetune_optimizer(clf, finetune_config("smoke"))
    scales = sorted({round(g["lr_scale"], 8) for g in opt.param_groups})
    assert scales == [round(0.65 ** k, 8) for k in (3, 2, 1, 0)]
    assert opt.defaults["betas"] == (0.9, 0.999)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.005}


def test_config_defaults_and_errors():
    cfg = finetune_config()
    assert (cfg.base_lr, cfg.weight_decay, cfg.layer_decay, cfg.drop_path, cfg.label_smoothing) == \
        (5e-4, 0.005, 0.65, 0.1, 0.1)
    assert (cfg.auto_augment, cfg.re_prob, cfg.mixup, cfg.cutmix, cfg.warmup_epochs) == \
        ("rand-m9-mstd0.5-inc1", 0.25, 0.0, 0.0, 5.0)
    with pytest.raises(ConfigError, match="unknown finetune key 'lr'"):
        finetune_config(lr=1.0)


def test_tiny_finetune_reduces_loss_and_writes_loadable_checkpoint(tmp_path, monkeypatch):
    made = []
    real = ft.finetune_optimizer
    monkeypatch.setattr(ft, "finetune_optimizer", lambda m, c: made.append(real(m, c)) or made[-1])
    enc = timm_encoder(depth=1)
    cfg = finetune_config("smoke", batch_size=12, epochs=4, base_lr=0.05, eval_batch_size=64)
    out = ft.run_finetune(enc, Blobs(48, 0), Blobs(24, 1), cfg, num_classes=3, out_path=tmp_path / "ft.pt")
    losses = [h["loss"] for h in out["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert out["metrics"]["steps"] == 16
    # the optimizer the loop stepped is the layer-decay one, with lr = lr(step) * lr_scale per group
    opt = made[0]
    ref = next(g for g in opt.param_groups if g["lr_scale"] == 1.0)["lr"]
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(ref * g["lr_scale"])
    model, meta = load_finetuned(out["checkpoint"])
    assert meta["step"] == 16 and meta["img_size"] == 32 and meta["model_kwargs"]["num_classes"] == 3
    x = torch.randn(2, 3, 32, 32)
    saved = torch.load(out["checkpoint"], weights_only=True)["model"]
    model2 = timm.create_model(meta["model_name"], **{**meta["model_kwargs"], "drop_path_rate": 0.0})
    model2.load_state_dict(saved)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model2.eval()(x))
    fp = out["fingerprint_fields"]
    assert fp["layer_decay"] == 0.65 and fp["lr_scaling"] == "base_lr*batch/256" and fp["effective_batch"] == 12


def test_mixup_option_runs_with_soft_targets():
    enc = timm_encoder(depth=1)
    cfg = finetune_config("smoke", batch_size=8, max_steps=2, mixup=0.8, cutmix=1.0, auto_augment=None)
    assert isinstance(ft._criterion(cfg), ft.SoftTargetCrossEntropy)
    out = ft.run_finetune(enc, Blobs(16, 0), Blobs(8, 1), cfg, num_classes=3)
    assert out["metrics"]["steps"] == 2 and out["checkpoint"] is None
    with pytest.raises(ConfigError, match="even per-rank batch"):
        ft.run_finetune(enc, Blobs(16, 0), Blobs(8, 1), finetune_config("smoke", batch_size=7, mixup=0.8), 3)


def test_checkpoint_save_load_round_trip(tmp_path):
    enc = timm_encoder()
    clf, spec = classifier_from_encoder(enc, 4)
    torch.nn.init.normal_(clf.head.weight)
    path = save_finetuned(tmp_path / "c.pt", clf, spec, step=5, img_size=32)
    model, meta = load_finetuned(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), clf.eval()(x))
    assert meta["step"] == 5 and spec == classifier_spec(enc, 4)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_finetuned(tmp_path / "nope.pt")


def test_randaugment_posterize_at_max_magnitude_does_not_crash():
    """rand-m9-mstd0.5-inc1 clips magnitude at 10 -> PosterizeIncreasing keeps 0 bits; Pillow >= 11 raises."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    tf = ft.train_transform(finetune_config("smoke"))
    img = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    assert tf(img).shape == (3, 32, 32)
    built = ft._pillow_safe(ft.create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1"))
    ops = [op for t in built.transforms for op in getattr(t, "ops", []) if isinstance(op, AugmentOp)]
    post = [op for op in ops if op.name == "PosterizeIncreasing"]
    assert len(post) == 1
    post[0].magnitude, post[0].magnitude_std, post[0].prob = 10, 0.0, 1.0
    out = post[0](Image.new("RGB", (8, 8), (200, 100, 50)))
    assert out.getpixel((0, 0)) == (0, 0, 0)  # 0 bits kept: black, as TF RandAugment
