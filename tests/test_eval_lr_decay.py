"""Layer-wise lr decay groups on 3-block models, against MAE's name rule written out here."""

from __future__ import annotations

import pytest
import timm
import torch

from canbench.evaluation.lr_decay import layer_ids, param_groups_lrd


def mae_layer_id(name: str, num_layers: int) -> int:
    """MAE util/lr_decay.get_layer_id_for_vit, verbatim logic."""
    if name in ["cls_token", "pos_embed"]:
        return 0
    if name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def classifier(depth=3):
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=depth, num_classes=5,
                             global_pool="avg", class_token=True, fc_norm=True)


def test_layer_ids_from_group_matcher_equal_mae_rule():
    model = classifier(3)
    ids, num_layers = layer_ids(model)
    assert num_layers == 4
    for name in ids:
        assert ids[name] == mae_layer_id(name, num_layers), name
    assert ids["blocks.2.mlp.fc2.weight"] == 3 and ids["head.weight"] == 4 and ids["fc_norm.bias"] == 4


def test_group_scales_and_weight_decay_exclusion():
    model = classifier(3)
    decay = 0.65
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=decay)
    seen = {}
    for g in groups:
        for n in g["param_names"]:
            seen[n] = g
    assert set(seen) == {n for n, _ in model.named_parameters()}
    # scale_i = decay ** (num_layers - i) with num_layers = depth + 1 = 4
    assert seen["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(decay ** 4)
    assert seen["cls_token"]["lr_scale"] == pytest.approx(decay ** 4)
    assert seen["blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(decay ** 3)
    assert seen["blocks.2.attn.qkv.weight"]["lr_scale"] == pytest.approx(decay ** 1)
    assert seen["head.weight"]["lr_scale"] == pytest.approx(1.0)
    assert seen["fc_norm.weight"]["lr_scale"] == pytest.approx(1.0)
    # no weight decay: 1-D params and no_weight_decay() names (pos_embed, cls_token are 3-D)
    assert seen["pos_embed"]["weight_decay"] == 0.0 and seen["cls_token"]["weight_decay"] == 0.0
    assert seen["blocks.1.norm1.weight"]["weight_decay"] == 0.0
    assert seen["blocks.1.attn.qkv.bias"]["weight_decay"] == 0.0
    assert seen["blocks.1.attn.qkv.weight"]["weight_decay"] == 0.05
    assert seen["head.weight"]["weight_decay"] == 0.05
    # usable by an optimizer as is
    torch.optim.AdamW(groups, lr=1e-3)


def test_shared_encoder_interface_and_frozen_params():
    from canbench.methods.backbone import ViTEncoder

    enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    enc.blocks[0].mlp.fc1.weight.requires_grad_(False)
    groups = param_groups_lrd(enc, 0.05, 0.5)
    names = {n: g for g in groups for n in g["param_names"]}
    assert "blocks.0.mlp.fc1.weight" not in names
    assert names["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5 ** 3)
    assert names["blocks.1.attn.proj.weight"]["lr_scale"] == pytest.approx(0.5)
    assert names["norm.weight"]["lr_scale"] == 1.0  # final norm: after the blocks


def test_fallback_without_group_matcher():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 8))
            self.blocks = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
            self.head = torch.nn.Linear(8, 2)

    ids, n = layer_ids(Plain())
    assert n == 3 and ids["pos_embed"] == 0 and ids["blocks.1.weight"] == 2 and ids["head.bias"] == 3
