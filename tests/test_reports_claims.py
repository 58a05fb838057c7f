"""Claims scorecard: verdicts follow the numbers; no runs -> 'not run at this scale'."""

from __future__ import annotations

import pandas as pd
import pytest

from canbench.reports.claims import FAILS, HOLDS, NOT_RUN, claim_flops, claims_markdown, evaluate_claims
from canbench.reports.collect import EVAL_COLUMNS, collect, collect_pretrain
from canbench.reports.synthetic import write_run


def _by_id(claims):
    return {c.id: c for c in claims}


def test_nothing_run(tmp_path):
    claims = evaluate_claims(pd.DataFrame(columns=EVAL_COLUMNS), None)
    assert len(claims) == 8 and {c.verdict for c in claims} == {NOT_RUN}
    assert "not run at this scale" in claims_markdown(claims)


def _table4(root, can_infonce, can_rec):
    for m, final in (("can", {"loss": 1, "infonce": can_infonce, "rec": can_rec}),
                     ("simclr", {"loss": 4, "infonce": 4.0}), ("mae", {"loss": 0.2, "rec": 0.2})):
        write_run(root, m, m, benchmark="table4", method_cfg={"mask_ratio": 0.5}, final=final)
    return _by_id(evaluate_claims(collect(root)))["table4_complementary"]


def test_table4_holds(tmp_path):
    c = _table4(tmp_path, 3.9, 0.19)
    assert c.verdict == HOLDS and c.numbers["can_contrastive"][0] == 3.9
    assert "vit_micro on builtin" in c.scale and "9.143" in c.evidence


def test_table4_fails_when_one_loss_is_higher(tmp_path):
    assert _table4(tmp_path, 3.9, 0.21).verdict == FAILS


def test_table4_partial_runs_are_not_run(tmp_path):
    write_run(tmp_path, "can", "can", benchmark="table4", final={"loss": 1, "infonce": 3.0, "rec": 0.1})
    c = _by_id(evaluate_claims(collect(tmp_path)))["table4_complementary"]
    assert c.verdict == NOT_RUN and "simclr" in c.evidence and "mae" in c.evidence


@pytest.mark.parametrize("an,verdict", [(20.0, HOLDS), (35.0, FAILS)])
def test_table5_c_hurts_most(tmp_path, an, verdict):
    for label, cfg, acc in (("AN", {"l_nce": 0.0}, an), ("CN", {"lam": 0.0}, 30.0),
                            ("CA", {"noise_mode": "none", "sigma_max": 0.0}, 31.0), ("CAN", {}, 40.0)):
        write_run(tmp_path, label, "can", benchmark="table5", method_cfg=cfg, evals={"linear": {"top1": acc}})
    claims = _by_id(evaluate_claims(collect(tmp_path)))
    assert claims["table5_removing_c_hurts_most"].verdict == verdict
    assert claims["table5_each_term_helps"].verdict == HOLDS


def test_table1_noise_helps(tmp_path):
    for mode, acc in (("none", 30.0), ("full", 29.0)):
        write_run(tmp_path, mode, "can", benchmark="table1", method_cfg={"noise_mode": mode},
                  evals={"linear": {"top1": acc}})
    claims = _by_id(evaluate_claims(collect(tmp_path)))
    assert claims["table1_noise_helps"].verdict == FAILS
    assert claims["table1_sigma_embedding_needed"].verdict == NOT_RUN


def test_fig6_claims(tmp_path):
    for m, curve in (("simclr", {0.0: 40.0, 0.5: 35.0, 0.75: 30.0}), ("can", {0.0: 38.0, 0.5: 41.0, 0.75: 37.0})):
        for r, acc in curve.items():
            write_run(tmp_path, f"{m}{r}", m, benchmark="fig6", method_cfg={"mask_ratio": r},
                      evals={"linear": {"top1": acc}})
    claims = _by_id(evaluate_claims(collect(tmp_path)))
    sim, can = claims["fig6_simclr_degrades_with_masking"], claims["fig6_can_peaks_at_nonzero_mask"]
    assert sim.verdict == HOLDS and sim.numbers["slope"] < 0
    assert can.verdict == HOLDS and can.numbers["peak"] == 0.5


def test_fig6_can_peak_at_zero_does_not_hold(tmp_path):
    for r, acc in {0.0: 42.0, 0.5: 41.0}.items():
        write_run(tmp_path, f"c{r}", "can", benchmark="fig6", method_cfg={"mask_ratio": r},
                  evals={"linear": {"top1": acc}})
    assert _by_id(evaluate_claims(collect(tmp_path)))["fig6_can_peaks_at_nonzero_mask"].verdict == FAILS


@pytest.mark.parametrize("simclr,can,verdict", [(738.2, 428.4, HOLDS), (35.02, 28.04, FAILS)])
def test_flops_ratio_from_a_table(simclr, can, verdict):
    tab = pd.DataFrame({"method": ["simclr", "can"], "arch": ["vit_large"] * 2, "flops": [simclr, can]})
    c = claim_flops(None, tab)
    assert c.verdict == verdict and c.numbers["ratios"]["vit_large"] == pytest.approx(simclr / can)


def test_flops_ratio_from_summaries(tmp_path):
    write_run(tmp_path, "s", "simclr", scale={"arch": "vit_large"}, flops=(1.2e11, 7.4e11))
    write_run(tmp_path, "c", "can", scale={"arch": "vit_large"}, flops=(7.1e10, 4.3e11))
    write_run(tmp_path, "cb", "can", scale={"arch": "vit_base"}, flops=(2.8e10, 1.7e11))
    c = claim_flops(collect_pretrain(tmp_path))
    assert c.verdict == HOLDS and c.numbers["ratios"] == {"vit_large": pytest.approx(7.4 / 4.3)}


def test_flops_table_schema_error():
    with pytest.raises(ValueError, match="missing \\['flops'\\]"):
        claim_flops(None, pd.DataFrame({"method": ["can"], "arch": ["vit_large"], "gflops": [1.0]}))
