"""Claims scorecard: one verdict per (scale, fingerprint) group with n per arm, judged against the noise;
a difference inside the noise is inconclusive, never "holds"; no runs -> the grid to run."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from canbench.reports.claim_specs import FIXED_CLAIMS, ordering_claims
from canbench.reports.claims import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_RUN,
    claim_flops,
    claims_markdown,
    evaluate_claims,
)
from canbench.reports.collect import EVAL_COLUMNS, collect, collect_pretrain
from canbench.reports.noise import quantile
from canbench.reports.synthetic import write_run

OFFSETS = (-0.2, 0.0, 0.2)  # three seeds, seed spread 0.2


def _by_id(claims, cid):
    hits = [c for c in claims if c.id == cid]
    assert hits, f"no claim {cid}"
    return hits


def _one(claims, cid):
    hits = _by_id(claims, cid)
    assert len(hits) == 1, [c.scale for c in hits]
    return hits[0]


def test_every_claim_without_runs_names_its_grid():
    claims = evaluate_claims(pd.DataFrame(columns=EVAL_COLUMNS), None)
    assert len(claims) == len(FIXED_CLAIMS) + len(ordering_claims()) + 3
    assert {c.verdict for c in claims} == {NOT_RUN}
    assert all("canbench grid submit" in c.evidence for c in claims)
    ids = {c.id for c in claims}
    # Table 1's whole chain, Tables 2/3 and Fig. 1 orderings, Table 4, 5, Fig. 6, 7, few-shot, robustness, FLOPs
    assert {"table1_augment_only_beats_none", "table1_full_beats_no_embedding",
            "table1_no_embedding_below_augment_only", "table4_can_lower_contrastive",
            "table4_can_lower_reconstruction", "table5_each_term_helps", "table5_removing_c_hurts_most",
            "fig6_simclr_degrades_with_masking", "fig6_can_peaks_at_nonzero_mask", "fig7_best_l_nce",
            "fig7_best_sigma_max", "fewshot_can_best", "robustness_can_best", "flops_ratio_vit_l",
            "table3_linear_vit_large_800ep_order", "fig1_finetune_vit_large_5000ep_order"} <= ids
    assert "0 holds, 0 does not hold, 0 inconclusive" in claims_markdown(claims)


def _table4(root, can_infonce, can_rec, seeds=3, spread=0.002, **kw):
    for s in range(seeds):
        d = OFFSETS[s] * spread / 0.2
        for m, final in (("can", {"loss": 1, "infonce": can_infonce + d, "rec": can_rec + d / 10}),
                         ("simclr", {"loss": 4, "infonce": 4.0 + d}), ("mae", {"loss": 0.2, "rec": 0.2 + d / 10})):
            write_run(root, f"{m}{s}", m, seed=s, benchmark="table4", method_cfg={"mask_ratio": 0.5}, final=final,
                      **kw)
    return evaluate_claims(collect(root))


def test_table4_holds_with_seeds_and_states_n_and_noise(tmp_path):
    claims = _table4(tmp_path, 3.9, 0.19)
    con, rec = _one(claims, "table4_can_lower_contrastive"), _one(claims, "table4_can_lower_reconstruction")
    assert con.verdict == HOLDS and con.n == {"can": 3, "simclr": 3}
    assert rec.verdict == HOLDS and rec.n == {"can": 3, "mae": 3}
    assert "pooled seed spread of this group's cells" in con.noise and "df 4" in con.noise
    assert "smoke scale: vit_micro on builtin" in con.scale and con.paper == "9.143 vs 9.157"
    tol = con.numbers["can>simclr"]["tolerance"]
    assert tol == pytest.approx(quantile(0.05, 4) * 0.002 * math.sqrt(2 / 3))


def test_table4_reversed_beyond_the_noise_does_not_hold(tmp_path):
    assert _one(_table4(tmp_path, 3.9, 0.25), "table4_can_lower_reconstruction").verdict == FAILS


def test_one_seed_per_arm_and_a_small_difference_is_inconclusive(tmp_path):
    """n = 1 per arm: no seed spread anywhere, so the floor (0.2% of a loss) decides; 0.1% apart is noise."""
    c = _one(_table4(tmp_path, 3.996, 0.19, seeds=1), "table4_can_lower_contrastive")
    assert c.verdict == INCONCLUSIVE and c.n == {"can": 1, "simclr": 1} and "floor" in c.noise


def test_partial_runs_say_what_is_missing(tmp_path):
    write_run(tmp_path, "can", "can", benchmark="table4", method_cfg={"mask_ratio": 0.5},
              final={"loss": 1, "infonce": 3.0, "rec": 0.1})
    c = _one(evaluate_claims(collect(tmp_path)), "table4_can_lower_contrastive")
    assert c.verdict == NOT_RUN and "needs simclr" in c.evidence and "table4_losses" in c.evidence


def _linear(root, name, method, bench, acc, seeds=3, **kw):
    for s in range(seeds):
        write_run(root, f"{name}_s{s}", method, seed=s, benchmark=bench, evals={"linear": {"top1": acc + OFFSETS[s]}},
                  **kw)


T5 = (("AN", {"l_nce": 0.0}), ("CN", {"lam": 0.0}), ("CA", {"noise_mode": "none", "sigma_max": 0.0}), ("CAN", {}))


@pytest.mark.parametrize("an,verdict", [(20.0, HOLDS), (35.0, FAILS), (30.1, INCONCLUSIVE)])
def test_table5_c_hurts_most(tmp_path, an, verdict):
    for (label, cfg), acc in zip(T5, (an, 30.0, 31.0, 40.0)):
        _linear(tmp_path, label, "can", "table5", acc, method_cfg=cfg, axes={"variant": label})
    claims = evaluate_claims(collect(tmp_path))
    c = _one(claims, "table5_removing_c_hurts_most")
    assert c.verdict == verdict and c.n == {"AN": 3, "CN": 3, "CA": 3}
    assert _one(claims, "table5_each_term_helps").verdict == (HOLDS if an < 38 else FAILS)


def test_each_scale_and_each_fingerprint_gets_its_own_verdict(tmp_path):
    for (label, cfg), acc in zip(T5, (20.0, 30.0, 31.0, 40.0)):
        _linear(tmp_path / "smoke", label, "can", "table5", acc, method_cfg=cfg, axes={"variant": label})
        # the same grid at another scale, where AN is not the worst
        _linear(tmp_path / "small", label, "can", "table5", {"AN": 32.0}.get(label, acc), method_cfg=cfg,
                axes={"variant": label}, extra={"scale": "small"}, scale={"arch": "vit_small"})
    claims = _by_id(evaluate_claims(collect(tmp_path)), "table5_removing_c_hurts_most")
    by_scale = {c.scale.split(" scale")[0]: c.verdict for c in claims}
    assert by_scale == {"smoke": HOLDS, "small": INCONCLUSIVE} or by_scale == {"smoke": HOLDS, "small": FAILS}
    assert len({c.group for c in claims}) == 2


def test_arms_with_another_probe_recipe_are_not_mixed(tmp_path):
    for (label, cfg), acc in zip(T5, (20.0, 30.0, 31.0, 40.0)):
        fp = {"epochs": 5 if label != "AN" else 50, "dataset": "builtin", "pooling": "avg"}
        _linear(tmp_path, label, "can", "table5", acc, method_cfg=cfg, axes={"variant": label}, eval_fp=fp)
    c = _one(evaluate_claims(collect(tmp_path)), "table5_removing_c_hurts_most")
    assert c.verdict == NOT_RUN and "needs AN" in c.evidence  # AN's probe differs: it is not in CN/CA's group


def test_unusable_results_make_a_claim_inconclusive(tmp_path):
    for (label, cfg), acc in zip(T5, (20.0, 30.0, float("nan"), 40.0)):
        _linear(tmp_path, label, "can", "table5", acc, seeds=1, method_cfg=cfg, axes={"variant": label})
    c = _one(evaluate_claims(collect(tmp_path)), "table5_removing_c_hurts_most")
    assert c.verdict == INCONCLUSIVE and "unusable results" in c.evidence and "CA" in c.evidence


def test_table1_chain(tmp_path):
    for mode, acc in (("none", 30.0), ("augment_only", 32.0), ("loss_without_sigma_embedding", 31.0),
                      ("full", 29.0)):
        _linear(tmp_path, mode, "can", "table1", acc, method_cfg={"noise_mode": mode},
                axes={"method.noise_mode": mode})
    claims = evaluate_claims(collect(tmp_path))
    assert _one(claims, "table1_augment_only_beats_none").verdict == HOLDS
    assert _one(claims, "table1_no_embedding_below_augment_only").verdict == HOLDS
    assert _one(claims, "table1_full_beats_no_embedding").verdict == FAILS
    assert _one(claims, "table1_full_beats_none").verdict == FAILS


def test_fig6_claims(tmp_path):
    for m, curve in (("simclr", {0.0: 40.0, 0.5: 35.0, 0.75: 30.0}), ("can", {0.0: 38.0, 0.5: 41.0, 0.75: 37.0})):
        for r, acc in curve.items():
            _linear(tmp_path, f"{m}{r}", m, "fig6", acc, method_cfg={"mask_ratio": r})
    claims = evaluate_claims(collect(tmp_path))
    sim, can = _one(claims, "fig6_simclr_degrades_with_masking"), _one(claims, "fig6_can_peaks_at_nonzero_mask")
    assert sim.verdict == HOLDS and sim.numbers["slope"] == pytest.approx(-10 / 0.75 * 0.75 / 0.75, rel=0.2)
    assert can.verdict == HOLDS and can.n == {"50%": 3, "0%": 3, "75%": 3}


def test_fig6_flat_simclr_curve_is_inconclusive_and_can_peak_at_zero_fails(tmp_path):
    for m, curve in (("simclr", {0.0: 40.0, 0.5: 40.1, 0.75: 39.9}), ("can", {0.0: 42.0, 0.5: 38.0, 0.75: 37.0})):
        for r, acc in curve.items():
            _linear(tmp_path, f"{m}{r}", m, "fig6", acc, method_cfg={"mask_ratio": r})
    claims = evaluate_claims(collect(tmp_path))
    assert _one(claims, "fig6_simclr_degrades_with_masking").verdict == INCONCLUSIVE
    assert _one(claims, "fig6_can_peaks_at_nonzero_mask").verdict == FAILS


@pytest.mark.parametrize("best_acc,verdict", [(45.0, HOLDS), (40.1, INCONCLUSIVE), (35.0, FAILS)])
def test_fig7_best_l_nce(tmp_path, best_acc, verdict):
    for v, acc in ((0.0, 30.0), (0.01, 40.0), (0.03, best_acc), (0.1, 39.0)):
        _linear(tmp_path, f"l{v}", "can", "fig7", acc, method_cfg={"l_nce": v})
    c = _one(evaluate_claims(collect(tmp_path)), "fig7_best_l_nce")
    assert c.verdict == verdict and c.n == {"l_nce=0": 3, "l_nce=0.01": 3, "l_nce=0.03": 3, "l_nce=0.1": 3}


def test_method_ordering_claims_come_from_the_paper_numbers(tmp_path):
    spec = next(s for s in ordering_claims() if s.id == "table3_linear_vit_large_800ep_order")
    assert spec.pairs == (("can", "simclr"), ("simclr", "mae")) and "CAN 76.2 > SimCLR 73.9 > MAE 71.4" in spec.paper
    for m, acc in (("can", 50.0), ("simclr", 45.0), ("mae", 40.0)):
        _linear(tmp_path, m, m, "table3", acc, axes={"preset": "vit_l", "optim.epochs": 800})
    c = _one(evaluate_claims(collect(tmp_path)), "table3_linear_vit_large_800ep_order")
    assert c.verdict == HOLDS and c.n == {"can": 3, "simclr": 3, "mae": 3}


def _fewshot(root, method, accs, seeds=2):
    for s in range(seeds):
        res = [{"dataset": d, "shots": k, "mean": a + k / 10 + OFFSETS[s], "std": 0.1, "seeds": [0]}
               for d, a in accs.items() for k in (5, 10)]
        write_run(root, f"{method}{s}", method, seed=s, benchmark="smoke", evals={"fewshot": {"results": res}})


def test_fewshot_counts_sets_per_shot_count(tmp_path):
    _fewshot(tmp_path, "can", {"a": 50.0, "b": 50.0, "c": 50.0})
    _fewshot(tmp_path, "simclr", {"a": 40.0, "b": 45.0, "c": 50.1})
    _fewshot(tmp_path, "mae", {"a": 41.0, "b": 44.0, "c": 30.0})
    claims = _by_id(evaluate_claims(collect(tmp_path)), "fewshot_can_best_5shot")
    c = claims[0]
    assert c.verdict == HOLDS and c.numbers["ahead"] == ["a", "b"] and c.numbers["within_noise"] == ["c"]
    assert "on 2 of 3 sets" in c.evidence and c.n == {"can": 2, "mae": 2, "simclr": 2}
    assert _one(evaluate_claims(collect(tmp_path)), "fewshot_can_best_10shot").verdict == HOLDS


def test_robustness_counts_sets(tmp_path):
    for m, accs in (("can", (50.0, 30.0, 20.0)), ("simclr", (52.0, 33.0, 25.0))):
        for s in range(2):
            res = [{"set": d, "top1": a + OFFSETS[s]} for d, a in zip(("x", "y", "z"), accs)]
            write_run(tmp_path, f"{m}{s}", m, seed=s, benchmark="smoke", evals={"shift": {"results": res}})
    c = _one(evaluate_claims(collect(tmp_path)), "robustness_can_best")
    assert c.verdict == FAILS and c.numbers["behind"] == ["x", "y", "z"]


@pytest.mark.parametrize("simclr,can,verdict", [(738.2, 428.4, HOLDS), (35.02, 28.04, FAILS)])
def test_flops_ratio_from_a_table(simclr, can, verdict):
    tab = pd.DataFrame({"method": ["simclr", "can"], "arch": ["vit_large"] * 2, "flops": [simclr, can]})
    c = claim_flops(None, tab)
    assert c.verdict == verdict and c.numbers["table_ratios"]["vit_large"] == pytest.approx(simclr / can)


def test_flops_ratio_from_the_runs_own_recorded_flops_wins_over_a_table(tmp_path):
    write_run(tmp_path, "s", "simclr", scale={"arch": "vit_large"}, flops=(1.2e11, 7.4e11))
    write_run(tmp_path, "c", "can", scale={"arch": "vit_large"}, flops=(7.1e10, 4.3e11))
    write_run(tmp_path, "cb", "can", scale={"arch": "vit_base"}, flops=(2.8e10, 1.7e11))
    tab = pd.DataFrame({"method": ["simclr", "can"], "arch": ["vit_large"] * 2, "flops": [35.02, 28.04]})
    c = claim_flops(collect_pretrain(tmp_path), tab)
    assert c.verdict == HOLDS and c.numbers["ratios"] == {"vit_large": pytest.approx(7.4 / 4.3)}
    assert "the runs' recorded training FLOPs" in c.evidence


def test_flops_at_other_sizes_are_reported_not_judged(tmp_path):
    write_run(tmp_path, "s", "simclr", flops=(1.0, 2.3))
    write_run(tmp_path, "c", "can", flops=(1.0, 2.0))
    c = claim_flops(collect_pretrain(tmp_path))
    assert c.verdict == NOT_RUN and "vit_micro 1.15" in c.evidence


def test_flops_table_schema_error():
    with pytest.raises(ValueError, match="missing \\['flops'\\]"):
        claim_flops(None, pd.DataFrame({"method": ["can"], "arch": ["vit_large"], "gflops": [1.0]}))
