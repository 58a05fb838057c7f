"""Shared encoder: positions, masking, patchify, timm export, decoder conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from canbench.methods.backbone import (
    TIMM_NAMES,
    ViTEncoder,
    build_encoder,
    patchify,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)
from canbench.methods.decoder import MAEDecoder
from canbench.train.recipe import build_config


def naive_pos_embed(dim: int, g: int) -> np.ndarray:
    """MAE util/pos_embed.py written out with loops."""
    out = np.zeros((g * g, dim))
    quarter = dim // 4
    for i in range(g):  # row (h)
        for j in range(g):  # column (w)
            t = i * g + j
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                out[t, k] = np.sin(j * omega)
                out[t, quarter + k] = np.cos(j * omega)
                out[t, 2 * quarter + k] = np.sin(i * omega)
                out[t, 3 * quarter + k] = np.cos(i * omega)
    return out


def test_sincos_matches_naive_mae():
    got = sincos_pos_embed_2d(16, 4, cls_token=True)[0].numpy()
    assert np.allclose(got[0], 0)
    np.testing.assert_allclose(got[1:], naive_pos_embed(16, 4), atol=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_exact_count(ratio):
    noise = torch.rand(5, 64, generator=torch.Generator().manual_seed(0))
    ids_keep, mask, ids_restore = random_masking(noise, ratio)
    keep = int(64 * (1 - ratio))
    assert ids_keep.shape == (5, keep)
    assert torch.all(mask.sum(1) == 64 - keep)
    for i in range(5):  # kept ids are exactly the zeros of the mask, and the lowest-noise tokens
        assert set(ids_keep[i].tolist()) == set(torch.nonzero(mask[i] == 0).flatten().tolist())
        assert set(ids_keep[i].tolist()) == set(torch.argsort(noise[i])[:keep].tolist())
    shuffled = torch.argsort(noise, 1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(64).expand(5, -1))


def test_patchify_roundtrip_and_order():
    x = torch.randn(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 is row 0, column 1; inside a patch pixels are row-major with channels last
    assert torch.equal(p[0, 1].view(4, 4, 3), x[0, :, 0:4, 4:8].permute(1, 2, 0))
    assert torch.equal(unpatchify(p, 4), x)


def test_encoder_masked_forward_equals_token_subset_when_all_kept():
    torch.manual_seed(0)
    enc = ViTEncoder(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2).eval()
    x = torch.randn(3, 3, 16, 16)
    ids = torch.arange(16).expand(3, -1)
    torch.testing.assert_close(enc.forward_features(x, ids), enc.forward_features(x))
    perm = torch.stack([torch.randperm(16) for _ in range(3)])
    pooled_perm = enc(x, perm)  # attention is permutation-equivariant: the mean pool is unchanged
    torch.testing.assert_close(pooled_perm, enc(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("class_token", [False, True])
def test_timm_export_loads_strict_and_matches(class_token):
    cfg = build_config("can", "smoke", [f"model.class_token={class_token}"] +
                       (["model.pool=cls"] if class_token else []))
    enc = build_encoder(cfg.model).eval()
    kwargs = enc.timm_kwargs()
    assert kwargs["class_token"] is class_token and kwargs["fc_norm"] is False
    model = timm.create_model(TIMM_NAMES["vit_micro"], pretrained=False, **kwargs).eval()
    model.load_state_dict(enc.export_timm(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), enc(x), atol=1e-5, rtol=1e-5)


def test_timm_interface():
    enc = ViTEncoder(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2)
    from timm.models._manipulate import group_with_matcher

    groups = group_with_matcher(enc.named_parameters(), enc.group_matcher())
    ref = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
                            num_classes=0, global_pool="avg", class_token=False, fc_norm=False)
    ref_groups = group_with_matcher(ref.named_parameters(), ref.group_matcher())
    names = lambda gs: {k: sorted(v) for k, v in gs.items()}  # noqa: E731
    assert names(groups) == {k: [n for n in v if n != "pos_embed"] for k, v in names(ref_groups).items()}
    assert "blocks.2.mlp.fc2.weight" in groups[3] and "patch_embed.proj.weight" in groups[0]
    assert "pos_embed" in enc.no_weight_decay()
    assert not any(n == "pos_embed" for n, _ in enc.named_parameters())  # fixed sin-cos: a buffer


def test_decoder_sigma_embedding_reaches_every_token():
    torch.manual_seed(0)
    dec = MAEDecoder(num_patches=16, encoder_dim=32, patch_size=4, dim=32, depth=1, num_heads=2,
                     sigma_embedding=True).eval()
    tokens = torch.randn(2, 8, 32)
    _, mask, ids_restore = random_masking(torch.rand(2, 16), 0.5)
    a = dec(tokens, ids_restore, torch.tensor([0.0, 0.0]))
    b = dec(tokens, ids_restore, torch.tensor([0.05, 0.0]))
    changed = (a - b).abs().amax(-1)  # (2, 16)
    assert torch.all(changed[0] > 0)  # visible AND mask-token positions of sample 0 all changed
    assert torch.all(changed[1] == 0)
    with pytest.raises(ValueError, match="sigma"):
        dec(tokens, ids_restore)
    # sigma MLP: sinusoidal embedding -> Linear, ReLU, Linear
    layers = list(dec.sigma_embed.mlp)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
