"""FLOP counting: paper ratios, the reference figures (BENCHMARKS.md), attention trap, fvcore cross-check, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch.utils.flop_counter import FlopCounterMode

from canbench.cli import main
from canbench.methods.flops import (
    PARTS,
    build_counting_model,
    count_fvcore_flops,
    count_method_flops,
    example_batch,
    unfused_attention,
)
from canbench.train.recipe import build_config

# reference figures (BENCHMARKS.md): fvcore forward GMAC per image, fused attention off
ANCHOR_GMAC = {
    "vit_b_in1k": {"simclr": 35.02, "can": 28.04, "mae": 9.68},
    "vit_l_in1k": {"simclr": 122.60, "can": 71.30, "mae": 20.44},
}


def _cfg(method: str, preset: str | None = None, overrides: list[str] | None = None):
    return build_config(method, preset, overrides or [], validate_paths=False)


@pytest.fixture(scope="module")
def paper_counts() -> dict[str, dict[str, dict]]:
    """count_method_flops for every method at ViT-B/16 and ViT-L/16 with the paper settings (meta device)."""
    return {p: {m: count_method_flops(_cfg(m, p)) for m in ("can", "simclr", "mae")} for p in ANCHOR_GMAC}


@pytest.mark.parametrize("preset,expected", [("vit_l_in1k", 1.72), ("vit_b_in1k", 1.25)])
def test_paper_ratio_simclr_over_can(paper_counts, preset, expected):
    c = paper_counts[preset]
    assert c["simclr"]["forward"] / c["can"]["forward"] == pytest.approx(expected, abs=0.02)
    assert c["simclr"]["train"] / c["can"]["train"] == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("preset", list(ANCHOR_GMAC))
def test_forward_gmac_matches_anchors(paper_counts, preset):
    # FlopCounterMode counts GEMMs/convs only; fvcore (the reference) also counts norms: < 0.3% apart
    for method, gmac in ANCHOR_GMAC[preset].items():
        ours = paper_counts[preset][method]["forward"] / 2e9
        assert ours == pytest.approx(gmac, rel=3e-3), (method, ours, gmac)


def test_train_is_measured_forward_plus_backward(paper_counts):
    for per_method in paper_counts.values():
        for c in per_method.values():
            assert c["train"] == pytest.approx(c["forward"] + c["backward"])
            # backward ~ 2x forward; a little less: the patch embedding needs no input gradient
            assert 2.9 < c["train"] / c["forward"] < 3.0


def test_by_module_parts(paper_counts):
    c = paper_counts["vit_b_in1k"]
    for per in c.values():
        assert set(per["by_module"]) == set(PARTS)
        assert sum(per["by_module"].values()) == pytest.approx(per["forward"])
        assert all(v >= 0 for v in per["by_module"].values())
    can = c["can"]["by_module"]
    assert can["sigma_mlp"] == 2 * 2 * (2 * 512 * 512)  # CAN's noise-level MLP: 2 layers 512x512, 2 views
    assert can["head"] > 0 and can["decoder"] > 0 and can["loss_and_other"] < 1e-6 * c["can"]["forward"]
    assert c["simclr"]["by_module"]["decoder"] == 0 and c["simclr"]["by_module"]["sigma_mlp"] == 0
    assert c["mae"]["by_module"]["head"] == 0 and c["mae"]["by_module"]["sigma_mlp"] == 0


def test_encoder_matches_analytic_vit_count_attention_included(paper_counts):
    # ViT-B/16, 196 tokens, D 768, 12 blocks: per token per block 12 D^2 MACs (qkv, proj, MLP) plus
    # 2 T D for q @ k^T and attn @ v; patch embedding 768 x D per token. SimCLR: 2 full views.
    t, d, depth = 196, 768, 12
    macs = depth * t * (12 * d * d + 2 * t * d) + t * 768 * d
    enc = paper_counts["vit_b_in1k"]["simclr"]["by_module"]["encoder"]
    assert enc == 2 * 2 * macs  # 2 FLOPs per MAC, 2 views


def test_attention_trap_on_cpu_is_handled(tiny_overrides):
    """Fused SDPA on CPU counts as 0 in FlopCounterMode; count_method_flops turns it off and sees it."""
    cfg = _cfg("simclr", "smoke", tiny_overrides)
    model = build_counting_model(cfg, "cpu")
    inputs = example_batch(cfg, 2, "cpu")
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    assert attn and all(m.fused_attn for m in attn)
    with FlopCounterMode(display=False) as fused, torch.no_grad():
        model(inputs)
    with unfused_attention(model) as n_switched, FlopCounterMode(display=False) as unfused, torch.no_grad():
        assert n_switched == len(attn)
        model(inputs)
    assert all(m.fused_attn for m in attn)  # flags restored
    assert unfused.get_total_flops() > fused.get_total_flops()
    on_cpu = count_method_flops(cfg, batch=2, device="cpu")
    on_meta = count_method_flops(cfg, batch=2, device="meta")
    assert on_cpu["forward"] == on_meta["forward"] == unfused.get_total_flops() / 2
    assert on_cpu["train"] == on_meta["train"]


@pytest.mark.parametrize("method", ["can", "simclr", "mae"])
def test_fvcore_agrees_within_one_percent(method):
    cfg = _cfg(method, "smoke")
    ours = count_method_flops(cfg, batch=2)
    fv = count_fvcore_flops(cfg, batch=2)
    assert fv["forward"] == pytest.approx(ours["forward"], rel=0.01)
    for part in ("encoder", "decoder", "head"):  # fvcore adds norms: ~1% of a 512-wide BN head
        assert fv["by_module"][part] == pytest.approx(ours["by_module"][part], rel=0.02, abs=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["can", "simclr", "mae"])
def test_fvcore_agrees_at_vit_b(method):
    cfg = _cfg(method, "vit_b_in1k")
    fv = count_fvcore_flops(cfg, batch=2)
    assert fv["forward"] / 2e9 == pytest.approx(ANCHOR_GMAC["vit_b_in1k"][method], abs=0.01)
    assert fv["forward"] == pytest.approx(count_method_flops(cfg)["forward"], rel=0.01)


def test_result_is_json_serialisable_for_the_engine_summary():
    c = count_method_flops(_cfg("can", "smoke"))
    json.dumps(c)
    assert c["method"] == "can" and c["arch"] == "vit_micro" and c["views"] == 2


def test_grad_checkpointing_not_counted_as_model_flops():
    plain = count_method_flops(_cfg("mae", "smoke"))
    ckpt = count_method_flops(_cfg("mae", "smoke", ["model.grad_checkpointing=true"]))
    assert ckpt["train"] == plain["train"]


def test_example_batch_rejects_empty_batch():
    with pytest.raises(ValueError, match="batch=0"):
        example_batch(_cfg("mae", "smoke"), 0)


def test_cli_flops_json_and_table(capsys):
    assert main(["flops", "--arch", "vit_micro", "--methods", "can,simclr", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["can", "simclr"]
    assert rows[0]["img_size"] == 32 and rows[0]["patch_size"] == 4  # vit_micro -> smoke preset
    assert rows[0]["train"] == count_method_flops(_cfg("can", "smoke"))["train"]
    assert rows[1]["train_ratio_to_can"] == pytest.approx(rows[1]["train"] / rows[0]["train"])
    assert main(["flops", "--methods", "simclr,can,mae"]) == 0
    out = capsys.readouterr().out
    assert "train GFLOP/img" in out and "simclr/can:" in out and "can/mae:" in out


def test_cli_flops_bad_method_names_it(capsys):
    assert main(["flops", "--methods", "can,byol"]) == 2
    assert "'byol'" in capsys.readouterr().err
