"""Regression check: planted regression -> 1, equal -> 0, nothing comparable -> 2, k x std widening."""

from __future__ import annotations

import json

import pytest

from canbench.io import read_json, write_json
from canbench.reports.check import BaselineError, check, read_baseline, tolerance, write_baseline
from canbench.reports.collect import collect
from canbench.reports.synthetic import PAPER, write_run

SEED_VALUES = {"can": [40.0, 41.0, 42.0], "mae": [30.0, 30.1, 29.9]}


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "runs"
    for m, vals in SEED_VALUES.items():
        for s, v in enumerate(vals):
            write_run(root, f"{m}{s}", m, seed=s, benchmark="smoke", evals={"linear": {"top1": v}},
                      final={"loss": 1.0 + 0.001 * s})
    return root


@pytest.fixture
def baseline(store, tmp_path):
    path = tmp_path / "baseline.csv"
    write_baseline(collect(store), path)
    return path


def _edit(store, run, value):
    path = store / run / "eval" / "linear.json"
    res = read_json(path)
    res["metrics"]["top1"] = value
    write_json(path, res)


def _cell(result, method, metric="top1"):
    c = result.cells
    return c[(c.method == method) & (c.metric == metric)].iloc[0]


def test_all_equal_passes(store, baseline):
    r = check(collect(store), baseline)
    assert r.exit_code == 0 and r.count("pass") == 4 and r.count("incomparable") == 0
    assert json.loads(json.dumps(r.to_json()))["counts"]["pass"] == 4


def test_planted_regression_exits_1(store, baseline):
    _edit(store, "mae1", 20.0)  # mae mean 30.0 -> 26.63
    r = check(collect(store), baseline, k=0.0)  # k=0: the planted outlier's own seed spread must not hide it
    assert r.exit_code == 1
    bad = _cell(r, "mae")
    assert bad.verdict == "regression" and bad.expected == pytest.approx(30.0) and bad.got < 27
    assert "smoke/mae" in r.message and "REGRESSIONS" in r.message
    assert _cell(r, "can").verdict == "pass"


def test_improvement_is_not_a_failure(store, baseline):
    for s in range(3):
        _edit(store, f"can{s}", 50.0 + s)
    r = check(collect(store), baseline)
    assert _cell(r, "can").verdict == "improvement" and r.exit_code == 0


def test_k_std_widening_used_with_seeds(store, baseline):
    for s, v in enumerate([38.0, 39.0, 40.0]):
        _edit(store, f"can{s}", v)  # mean 39.0, 2.0 below baseline, seed std 1.0
    wide = check(collect(store), baseline, k=3.0)
    cell = _cell(wide, "can")
    assert cell.verdict == "pass" and bool(cell.widened)
    assert cell.tolerance == pytest.approx(3.0) and "3 x seed std 1" in cell.rule
    narrow = _cell(check(collect(store), baseline, k=0.5), "can")
    assert narrow.verdict == "regression" and not narrow.widened and "abs 1 point" in narrow.rule


def test_tolerance_rules():
    assert tolerance("top1", 70.0, [float("nan")], 3.0, None, (1, 0))[:2] == (1.0, "abs 1 point (accuracy default)")
    tol, rule, widened = tolerance("contrastive_loss", 9.0, [float("nan")], 3.0, None, (1, 0))
    assert tol == pytest.approx(0.18) and "rel 2%" in rule and not widened
    tol, rule, widened = tolerance("top1", 70.0, [0.5, 0.2], 3.0, 0.5, (3, 3))
    assert tol == pytest.approx(1.5) and widened and "--abs-tol" in rule


def test_loss_cells_use_relative_tolerance(store, baseline):
    r = check(collect(store), baseline)
    loss = _cell(r, "mae", "loss")
    assert loss.protocol == "train_loss" and loss.verdict == "pass"
    assert "rel 2%" in loss.rule and not loss.widened and loss.tolerance == pytest.approx(0.02 * 1.001)


def test_smoke_against_paper_is_nothing_comparable(tmp_path):
    write_run(tmp_path, "an", "can", benchmark="table5", method_cfg={"l_nce": 0.0}, evals={"linear": {"top1": 42.8}})
    r = check(collect(tmp_path), "paper")
    assert r.exit_code == 2 and r.compared == 0
    assert "NOTHING COMPARABLE" in r.message and "pretrain.arch vit_micro (paper vit_base)" in r.message


def test_paper_scale_against_paper(tmp_path):
    for s, v in enumerate([42.6, 43.0]):
        write_run(tmp_path, f"an{s}", "can", seed=s, benchmark="table5", scale=PAPER, method_cfg={"l_nce": 0.0},
                  evals={"linear": {"top1": v}})
    r = check(collect(tmp_path), "paper")
    assert r.exit_code == 0 and _cell(r, "can").verdict == "pass"
    for s in range(2):
        _edit(tmp_path, f"an{s}", 40.0)
    r = check(collect(tmp_path), "paper")
    assert r.exit_code == 1 and _cell(r, "can").expected == 42.8


def test_fingerprint_change_is_incomparable(store, baseline):
    for m, vals in SEED_VALUES.items():
        for s in range(len(vals)):
            path = store / f"{m}{s}" / "eval" / "linear.json"
            res = read_json(path)
            res["fingerprint"]["epochs"] = 50
            write_json(path, res)
    r = check(collect(store).query("suite == 'linear'"), baseline)
    assert r.exit_code == 2
    assert "eval.epochs 50 (baseline 5)" in _cell(r, "can").reason
    # the baseline's loss cells have no current result at all
    assert (r.cells.reason == "no reproduced result for this baseline cell").sum() == 2


def test_informational_fields_do_not_block(store, baseline):
    path = store / "can0" / "eval" / "linear.json"
    res = read_json(path)
    res["fingerprint"].update(code_version="other", torch="9.9", device_type="cuda")
    write_json(path, res)
    assert check(collect(store), baseline).exit_code == 0


def test_baseline_errors(tmp_path, store):
    with pytest.raises(BaselineError, match="does not exist"):
        read_baseline(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("table,method\nx,y\n")
    with pytest.raises(BaselineError, match=f"{bad}.*lacks columns"):
        check(collect(store), bad)
    with pytest.raises(BaselineError, match="no results"):
        (tmp_path / "empty").mkdir()
        write_baseline(collect(tmp_path / "empty"), tmp_path / "empty.csv")


def test_baseline_roundtrip_columns(store, baseline):
    df = read_baseline(baseline)
    row = df[(df.method == "can") & (df.metric == "top1")].iloc[0]
    assert row["mean"] == pytest.approx(41.0) and row["std"] == pytest.approx(1.0) and row["n"] == 3
    assert row["seeds"] == "0 1 2" and row["fingerprint"]["pretrain.arch"] == "vit_micro"
    assert not list(baseline.parent.glob(".baseline.csv.*"))  # atomic write left no temp file
