"""Loss terms against naive reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from canbench.methods import build_method
from canbench.methods.losses import info_nce, masked_patch_mse
from canbench.train.recipe import build_config


def naive_info_nce(u1: torch.Tensor, u2: torch.Tensor, tau: float) -> float:
    """Paper Sec. 3.2 written as loops over anchors: positive = other view, negatives = other 2n-2."""
    n = u1.shape[0]
    allz = [u1[i] for i in range(n)] + [u2[i] for i in range(n)]
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        num = math.exp(float(allz[a] @ allz[pos]) / tau)
        den = sum(math.exp(float(allz[a] @ allz[b]) / tau) for b in range(2 * n) if b != a)
        total += -math.log(num / den)
    return total / (2 * n)


def test_info_nce_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    u1 = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    u2 = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    assert float(info_nce(u1, u2, 0.1)) == pytest.approx(naive_info_nce(u1, u2, 0.1), rel=1e-5)
    assert float(info_nce(u1, u1.clone(), 0.5)) < float(info_nce(u1, u2, 0.5))  # aligned views: lower loss


def test_masked_mse_counts_only_selected_patches():
    pred = torch.zeros(2, 4, 3)
    target = torch.tensor([[[1.0] * 3, [2.0] * 3, [3.0] * 3, [4.0] * 3]] * 2)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float32)
    # naive: mean over the masked patches of per-patch MSE = (1 + 16 + 9) / 3
    assert float(masked_patch_mse(pred, target, mask)) == pytest.approx((1 + 16 + 9) / 3)
    assert float(masked_patch_mse(pred, target, 1 - mask)) == pytest.approx((4 + 9 + 1 + 4 + 16) / 5)
    target_changed = target.clone()
    target_changed[0, 1] = 100.0  # a visible patch: L_rec must not see it
    assert float(masked_patch_mse(pred, target_changed, mask)) == pytest.approx((1 + 16 + 9) / 3)


def _batch(v, n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"views": torch.randn(v, n, 3, size, size, generator=g), "seed": torch.arange(n) + 100}


def test_can_losses_are_computed_on_the_right_patches(tiny_overrides):
    torch.manual_seed(0)
    net = build_method(build_config("can", "smoke", tiny_overrides)).eval()
    b = _batch(2)
    with torch.no_grad():  # values only (the terms come back undetached)
        base = net(b)
    # rec sees the clean target only on masked patches: changing only masked-out pixels' *inputs*
    # cannot change the encoder output, only the target -> rec changes, infonce does not
    seeds = net.view_seeds(b["seed"], 2)
    _, mask, _ = net.masking(seeds)
    from canbench.methods.backbone import unpatchify
    pmask = unpatchify(mask[:, :, None].expand(-1, -1, 4 * 4 * 3), 4).view(2, 4, 3, 16, 16)
    b2 = {"views": b["views"] + 3.0 * pmask, "seed": b["seed"]}
    with torch.no_grad():
        other = net(b2)
    assert float(other["infonce"]) == pytest.approx(float(base["infonce"]), abs=1e-5)
    assert float(other["denoise"]) == pytest.approx(float(base["denoise"]), abs=1e-5)
    assert float(other["rec"]) != pytest.approx(float(base["rec"]), abs=1e-3)


def test_loss_weights_sum_to_one():
    for l_nce, lam in [(0.03, 0.7), (0.0, 1.0), (0.5, 0.0), (1.0, 0.3)]:
        cfg = build_config("can", "smoke", [f"method.l_nce={l_nce}", f"method.lam={lam}"])
        net = build_method(cfg)
        assert sum(net.weights.values()) == pytest.approx(1.0)
        assert net.weights["infonce"] == l_nce
        assert net.weights["rec"] == pytest.approx((1 - l_nce) * lam)


def test_can_total_is_the_weighted_sum(tiny_overrides):
    torch.manual_seed(0)
    net = build_method(build_config("can", "smoke", tiny_overrides))
    with torch.no_grad():
        out = net(_batch(2))
    w = net.weights
    expect = w["infonce"] * out["infonce"] + w["rec"] * out["rec"] + w["denoise"] * out["denoise"]
    assert float(out["loss"]) == pytest.approx(float(expect), rel=1e-6)


def test_can_at_mask_ratio_0_keeps_the_paper_weights_and_says_rec_is_empty(tiny_overrides, caplog):
    """Fig. 6's 0 % point (docs/protocols.md §6.6): L_rec is over masked patches, so with none it is 0 (no
    gradient) and the other terms keep their weights; the method says so, and the run summary records it."""
    from canbench.config import ConfigError

    with caplog.at_level("WARNING"):
        net = build_method(build_config("can", "smoke", tiny_overrides + ["method.mask_ratio=0"]))
    assert "the rec term is empty" in caplog.text
    assert set(net.empty_terms()) == {"rec"} and "0.679" in net.empty_terms()["rec"]
    assert net.weights == pytest.approx({"infonce": 0.03, "rec": 0.97 * 0.7, "denoise": 0.97 * 0.3})
    with torch.no_grad():
        out = net(_batch(2))
    assert float(out["rec"]) == 0.0
    assert float(out["loss"]) == pytest.approx(float(0.03 * out["infonce"] + 0.97 * 0.3 * out["denoise"]), rel=1e-6)
    assert build_method(build_config("can", "smoke", tiny_overrides)).empty_terms() == {}
    with pytest.raises(ConfigError, match="method.mask_ratio=0 leaves mae nothing to reconstruct"):
        build_config("mae", "smoke", tiny_overrides + ["method.mask_ratio=0"])


def test_can_reduces_to_mae(tiny_overrides):
    """CAN with l_nce=0, lam=1, mask 0.75, one view, no noise equals MAE on the same inputs."""
    over = tiny_overrides + ["method.mask_ratio=0.75"]
    torch.manual_seed(0)
    can = build_method(build_config("can", "smoke", over + ["method.l_nce=0", "method.lam=1",
                                                              "method.noise_mode=none"]))
    mae = build_method(build_config("mae", "smoke", over))
    assert can.head is None and can.decoder.sigma_embed is None
    mae.load_state_dict(can.state_dict(), strict=True)
    b = _batch(1)
    a, m = can(b), mae(b)
    assert set(a) == {"rec", "loss"} and set(m) == {"rec", "loss"}
    torch.testing.assert_close(a["loss"], m["loss"])


@pytest.mark.parametrize("method,extra", [
    ("can", []), ("simclr", []), ("mae", []), ("simclr", ["method.mask_ratio=0.5"]),
    ("can", ["method.noise_mode=loss_without_sigma_embedding"]), ("can", ["method.noise_mode=augment_only"]),
    ("can", ["method.l_nce=0"]), ("can", ["method.lam=0"]), ("can", ["method.noise_mode=none"]),
])
def test_every_parameter_gets_a_gradient_and_is_optimized(method, extra, tiny_overrides):
    from canbench.train.step import param_groups

    torch.manual_seed(0)
    net = build_method(build_config(method, "smoke", tiny_overrides + extra))
    out = net(_batch(1 if method == "mae" else 2))
    out["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    in_opt = {id(p) for g in param_groups(net, 0.05) for p in g["params"]}
    assert in_opt == {id(p) for p in net.parameters()}
    no_decay = {id(p) for p in param_groups(net, 0.05)[1]["params"]}
    for n, p in net.named_parameters():
        assert (id(p) in no_decay) == (p.ndim <= 1 or n.endswith("cls_token")), n


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_compiled_one_term_loss_keeps_its_graph(method, tiny_overrides):
    """torch.compile'd one-term methods: same loss and gradients as eager (a detached alias of the term
    returned next to ``1.0 * term`` used to drop the loss's grad_fn under inductor)."""
    torch.manual_seed(0)
    net = build_method(build_config(method, "smoke", tiny_overrides))
    batch = _batch(1 if method == "mae" else 2)
    eager = net(batch)
    eager["loss"].backward()
    ref = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    out = torch.compile(net)(batch)
    assert out["loss"].requires_grad
    torch.testing.assert_close(out["loss"], eager["loss"], rtol=1e-4, atol=1e-5)
    out["loss"].backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-3, atol=1e-5, msg=n)
