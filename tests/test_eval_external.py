"""Public checkpoint loading: fake MAE-format checkpoints built from timm models, round trips, key errors."""

from __future__ import annotations

import pytest
import timm
import torch

from canbench.evaluation.external import load_external, map_state_dict, read_checkpoint


def vit(class_token=True, num_classes=0, global_pool="avg", fc_norm=False, seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=num_classes,
                             global_pool=global_pool, class_token=class_token, fc_norm=fc_norm).eval()


def fake_mae_pretrain_checkpoint(src: torch.nn.Module) -> dict:
    """MAE pretraining layout: encoder keys (cls_token, pos_embed with cls row, ...) + decoder + mask token."""
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    d = 16
    sd.update({"mask_token": torch.zeros(1, 1, d), "decoder_embed.weight": torch.randn(d, 192),
               "decoder_embed.bias": torch.zeros(d), "decoder_pos_embed": torch.zeros(1, 17, d),
               "decoder_blocks.0.attn.qkv.weight": torch.randn(3 * d, d), "decoder_norm.weight": torch.ones(d),
               "decoder_pred.weight": torch.randn(192, d)})
    return {"model": sd, "optimizer": {}, "epoch": 799}


def test_mae_pretrain_round_trip_outputs_equal(tmp_path):
    src = vit(class_token=True)
    path = tmp_path / "mae_pretrain_vit.pth"
    torch.save(fake_mae_pretrain_checkpoint(src), path)
    dst = vit(class_token=True, seed=1)
    report = load_external(dst, path, fmt="mae")
    assert "mask_token" in report["dropped"] and "decoder_pred.weight" in report["dropped"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))


def test_mae_into_encoder_without_cls_token_drops_its_position(tmp_path):
    src = vit(class_token=True)
    path = tmp_path / "ckpt.pth"
    torch.save(fake_mae_pretrain_checkpoint(src), path)
    dst = vit(class_token=False, seed=1)
    report = load_external(dst, path)
    assert "cls_token" in report["dropped"]
    torch.testing.assert_close(dst.pos_embed, src.pos_embed[:, 1:])
    torch.testing.assert_close(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_shared_encoder_target():
    from canbench.methods.backbone import ViTEncoder

    src = vit(class_token=True)
    enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, class_token=False)
    load_external(enc, fake_mae_pretrain_checkpoint(src)["model"], fmt="mae")
    torch.testing.assert_close(enc.patch_embed.proj.weight, src.patch_embed.proj.weight)


def test_finetuned_mae_checkpoint_into_classifier_and_not_into_encoder(tmp_path):
    src = vit(class_token=True, num_classes=10, fc_norm=True)  # MAE finetuned: fc_norm + head, no norm
    assert "norm.weight" not in src.state_dict()
    path = tmp_path / "mae_finetuned_vit.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = vit(class_token=True, num_classes=10, fc_norm=True, seed=3)
    load_external(dst, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    with pytest.raises(KeyError, match=r"missing keys \['norm\.bias', 'norm\.weight'\].*fc_norm"):
        load_external(vit(class_token=True), path)


def test_timm_weights_into_encoder_drop_head_and_cls(tmp_path):
    from safetensors.torch import save_file

    src = vit(class_token=True, num_classes=5, global_pool="token")  # timm classifier layout with norm + head
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = vit(class_token=False, seed=2)
    report = load_external(dst, path, fmt="timm")
    assert {"head.weight", "head.bias", "cls_token"} <= set(report["dropped"])
    torch.testing.assert_close(dst.norm.weight, src.norm.weight)


def test_corrupted_key_sets_raise_with_names(tmp_path):
    sd = fake_mae_pretrain_checkpoint(vit())["model"]
    sd["blocks.0.attn.qkvv.weight"] = sd.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(KeyError, match=r"match no mapping rule: \['blocks\.0\.attn\.qkvv\.weight'\]"):
        map_state_dict(sd, vit())
    sd = fake_mae_pretrain_checkpoint(vit())["model"]
    del sd["blocks.1.norm2.bias"]
    with pytest.raises(KeyError, match=r"unexpected keys \[\], missing keys \['blocks\.1\.norm2\.bias'\]"):
        load_external(vit(), sd)
    sd = fake_mae_pretrain_checkpoint(vit())["model"]
    sd["pos_embed"] = torch.zeros(1, 50, 192)
    with pytest.raises(ValueError, match=r"pos_embed: source shape \(1, 50, 192\)"):
        load_external(vit(), sd)
    torch.save(["not", "a", "dict"], tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth does not hold a state dict"):
        read_checkpoint(tmp_path / "bad.pth")


def test_loading_is_weights_only(tmp_path, capsys):
    from canbench.cli import main
    from canbench.config import ConfigError

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"model": {"x": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match=r"evil.pth cannot be loaded safely \(torch.load weights_only=True\)"):
        read_checkpoint(tmp_path / "evil.pth")
    assert "executed" not in capsys.readouterr().out
    # through the command: exit 2 naming the path, no traceback
    assert main(["evaluate", "knn", "--checkpoint", str(tmp_path / "evil.pth"), "--format", "mae",
                 "--arch", "vit_tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("canbench: error:") and "evil.pth cannot be loaded safely" in err


def test_fb_mae_training_checkpoints_with_their_args_namespace_load(tmp_path):
    """facebookresearch/mae's main_pretrain.py saves {'model', 'optimizer', 'epoch', 'scaler', 'args'} with args an
    argparse.Namespace: exactly that type is allowed, the weights load and match."""
    import argparse

    src = vit(class_token=True)
    ckpt = fake_mae_pretrain_checkpoint(src)
    ckpt.update(scaler={"scale": 65536.0}, args=argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75,
                                                                    norm_pix_loss=True, blr=1.5e-4, input_size=224))
    torch.save(ckpt, tmp_path / "checkpoint-799.pth")
    dst = vit(class_token=True, seed=1)
    load_external(dst, tmp_path / "checkpoint-799.pth", fmt="mae")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))


@pytest.mark.parametrize("pool_set", [None, "avg"], ids=["default-cls", "override-avg"])
def test_mae_linear_probe_pools_the_cls_token_like_mae(tmp_path, monkeypatch, capsys, pool_set):
    """fb/mae's main_linprobe.py reads the cls token after the final norm (global_pool=False): a public MAE
    checkpoint's linear-probe features are that token unless model.pool says otherwise, and the fingerprint says
    which pooling was used."""
    import json

    from canbench.cli import main
    from canbench.evaluation import features as F

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=4, num_classes=0,
                            global_pool="token", class_token=True, fc_norm=False).eval()
    with torch.no_grad():  # a cls token far from the patch tokens: the two poolings give different features
        src.cls_token.normal_(0, 3.0)
    ckpt = tmp_path / "mae_pretrain_vit_micro.pth"
    torch.save(fake_mae_pretrain_checkpoint(src), ckpt)

    seen = []
    real = F.extract_features

    def spy(encoder, loader, device="cpu"):
        feats, labels = real(encoder, loader, device)
        seen.append((torch.cat([x for x, _ in loader]), feats))
        return feats, labels

    monkeypatch.setattr(F, "extract_features", spy)
    sets = ["data.dataset=builtin", "data.train_size=48", "data.test_size=24", "linear.batch_size=16",
            "linear.epochs=1"] + ([f"model.pool={pool_set}"] if pool_set else [])
    out = tmp_path / "mae-public"
    argv = ["evaluate", "linear", "--checkpoint", str(ckpt), "--format", "mae", "--out", str(out), "--preset",
            "smoke", "--device", "cpu", "--json"] + sum([["--set", s] for s in sets], [])
    assert main(argv) == 0, capsys.readouterr().err
    assert seen
    for images, feats in seen:
        with torch.no_grad():  # the naive reference: MAE's ViT forward, then the token MAE's protocol reads
            tokens = src.forward_features(images)
        cls, mean = tokens[:, 0], tokens[:, 1:].mean(dim=1)
        assert (cls - mean).abs().max() > 0.1  # the test can tell the two apart
        want = mean if pool_set == "avg" else cls
        torch.testing.assert_close(feats, want, atol=1e-4, rtol=1e-4)
    fp = json.loads((out / "eval" / "linear.json").read_text())["fingerprint"]
    pool = pool_set or "cls"
    assert fp["pooling"] == pool and fp["encoder"]["pool"] == pool and fp["eval_config"]["model"]["pool"] == pool
