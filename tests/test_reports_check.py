"""The reproduction check: every reference cell must be present, compared and within a tolerance that comes from the
reference's seeds (or the documented floor); planted failures each end non-zero with the right verdict."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import yaml

from canbench.cli import main
from canbench.io import read_json, write_json
from canbench.reports.check import BaselineError, check, read_baseline, write_baseline
from canbench.reports.collect import collect
from canbench.reports.noise import FLOORS, quantile
from canbench.reports.synthetic import write_paper_run, write_run

# three methods x three seeds, seed spreads of a few tenths of a point: a baseline that can certify a pass
SEEDS = {"can": [70.0, 70.4, 69.8], "simclr": [68.0, 68.3, 67.9], "mae": [60.0, 60.2, 59.7]}
FINETUNE_LOSS = {"can": 0.80, "simclr": 0.85, "mae": 0.70}


def _write_store(root):
    for m, vals in SEEDS.items():
        for s, v in enumerate(vals):
            evals = {"linear": {"top1": v}}
            if s == 0:
                evals["finetune"] = {"top1": v + 10, "final_loss": FINETUNE_LOSS[m]}
            write_run(root, f"{m}{s}", m, seed=s, benchmark="smoke", evals=evals,
                      final={"loss": 1.0 + 0.002 * s}, extra={"suites": list(evals)})
    return root


@pytest.fixture
def store(tmp_path):
    return _write_store(tmp_path / "runs")


@pytest.fixture
def baseline(store, tmp_path):
    path = tmp_path / "baseline.csv"
    write_baseline(collect(store), path)
    return path


def _edit(path, fn):
    res = read_json(path)
    fn(res)
    write_json(path, res)


def _set_top1(store, run, value):
    _edit(store / run / "eval" / "linear.json", lambda r: r["metrics"].__setitem__("top1", value))


def _cell(result, method, protocol="linear", metric="top1"):
    c = result.cells
    return c[(c.method == method) & (c.protocol == protocol) & (c.metric == metric)].iloc[0]


def test_unchanged_results_pass_every_reference_cell(store, baseline):
    r = check(collect(store), baseline)
    assert r.exit_code == 0 and r.count("pass") == r.reference_cells == len(read_baseline(baseline))
    assert "compared 12 of 12 reference cells" in r.summary and "PASS (exit 0)" in r.summary
    assert json.loads(json.dumps(r.to_json()))["counts"]["pass"] == 12


def test_a_small_change_within_the_seed_noise_passes_with_its_tolerance_stated(store, baseline):
    _set_top1(store, "can0", 70.3)  # mean 70.067 -> 70.167
    cell = _cell(check(collect(store), baseline), "can")
    # the tolerance is the reference's pooled seed spread (three linear cells, df 6) at alpha 0.05 / 12 cells
    ref = read_baseline(baseline)
    lin = ref[(ref.protocol == "linear") & (ref.metric == "top1")]
    sd = math.sqrt(sum(2 * s * s for s in lin["std"]) / 6)
    assert cell.tolerance == pytest.approx(quantile(0.05 / 12, 6) * sd * math.sqrt(2 / 3))
    assert cell.verdict == "pass" and "pooled seed spread of 3 reference linear/top1 cells" in cell.noise


def _drop_one_seed(store, baseline):
    _set_top1(store, "can1", 70.4 - 5)  # one seed collapses by 5 points


def _nan_seed(store, baseline):
    _set_top1(store, "can1", float("nan"))


def _torn_file(store, baseline):
    (store / "can1" / "eval" / "linear.json").write_text('{"suite": "linear", "metr')


def _delete_all_but_one(store, baseline):
    files = sorted(store.glob("*/eval/*.json"))
    for p in files[1:]:
        p.unlink()


def _protocol_differs_and_lower(store, baseline):
    for m, vals in SEEDS.items():
        for s in range(len(vals)):
            _edit(store / f"{m}{s}" / "eval" / "linear.json",
                  lambda r: (r["fingerprint"].__setitem__("epochs", 50), r["metrics"].__setitem__(
                      "top1", r["metrics"]["top1"] - 10)))


def _finetune_loss_worse(store, baseline):
    _edit(store / "can0" / "eval" / "finetune.json",
          lambda r: r["metrics"].__setitem__("final_loss", r["metrics"]["final_loss"] * 1.5))


def _stale_checkpoint(store, baseline):
    _edit(store / "can2" / "summary.json", lambda r: r.__setitem__("checkpoint_sha256", "f" * 64))


PLANTED = [  # (case, the cell it hits, expected verdict, words the reason must contain)
    (_drop_one_seed, ("can", "linear", "top1"), "regression", ""),
    (_nan_seed, ("can", "linear", "top1"), "invalid", "not a finite number"),
    (_torn_file, ("can", "linear", "top1"), "invalid", "unreadable result"),
    (_delete_all_but_one, ("mae", "linear", "top1"), "invalid", "missing result"),
    (_protocol_differs_and_lower, ("can", "linear", "top1"), "incomparable", "eval.epochs 50 (baseline 5)"),
    (_finetune_loss_worse, ("can", "finetune", "final_loss"), "regression", ""),
    (_stale_checkpoint, ("can", "linear", "top1"), "stale", "made from checkpoint 000000000000"),
]


@pytest.mark.parametrize("plant,where,verdict,words", PLANTED, ids=[p[0].__name__[1:] for p in PLANTED])
def test_planted_failures_end_non_zero(store, baseline, plant, where, verdict, words, capsys):
    plant(store, baseline)
    r = check(collect(store), baseline)
    cell = _cell(r, *where)
    assert cell.verdict == verdict and words in cell.reason
    assert r.exit_code == 1 and "FAIL (exit 1)" in r.summary
    assert main(["check", str(store), "--against", str(baseline)]) == 1  # the command's exit code too
    assert verdict.upper() in capsys.readouterr().out


def test_a_collapsed_seed_does_not_widen_its_own_tolerance(store, baseline):
    before = _cell(check(collect(store), baseline), "can").tolerance
    _drop_one_seed(store, baseline)
    after = _cell(check(collect(store), baseline), "can")
    assert after.tolerance == pytest.approx(before) and after.got_std > 2.5  # the spread is the candidate's alone


def test_every_planted_case_on_the_command_line(store, baseline, tmp_path):
    """The same cases as exit codes of `canbench check`, each on a fresh copy of the store."""
    for plant, *_ in PLANTED:
        root = tmp_path / plant.__name__
        shutil.copytree(store, root)
        plant(root, baseline)
        assert main(["check", str(root), "--against", str(baseline)]) == 1, plant.__name__


def test_improvements_are_outside_the_tolerance_too(store, baseline):
    for s in range(3):
        _set_top1(store, f"mae{s}", 64.0 + 0.1 * s)
    r = check(collect(store), baseline)
    assert _cell(r, "mae").verdict == "improvement" and r.exit_code == 1


def test_noise_wider_than_a_meaningful_difference_is_inconclusive(tmp_path):
    root = tmp_path / "runs"
    for s, v in enumerate([60.0, 66.0, 63.0]):  # seed spread 3 points
        write_run(root, f"can{s}", "can", seed=s, benchmark="smoke", evals={"linear": {"top1": v}})
    base = tmp_path / "b.csv"
    write_baseline(collect(root).query("suite == 'linear'"), base)
    _set_top1(root, "can0", 60.5)
    cell = _cell(check(collect(root), base), "can")
    assert cell.verdict == "inconclusive" and cell.tolerance > FLOORS["linear"].cap
    assert "run more seeds" in cell.reason


def test_baselines_are_validated(store, baseline, tmp_path):
    rows = pd.read_csv(baseline, dtype=str, keep_default_na=False)

    def bad(edit, match):
        df = rows.copy()
        edit(df)
        path = tmp_path / "bad.csv"
        df.to_csv(path, index=False)
        with pytest.raises(BaselineError, match=match):
            read_baseline(path)
        assert main(["check", str(store), "--against", str(path)]) == 2

    lin = (rows.method == "can") & (rows.protocol == "linear") & (rows.metric == "top1")
    bad(lambda d: d.__setitem__("std", d["std"].where(~lin, "1000")), r"row \d+: accuracy top1 .*std=1000")
    bad(lambda d: d.__setitem__("std", d["std"].where(~lin, "-0.5")), r"std='-0.5' must be a finite, non-negative")
    bad(lambda d: d.__setitem__("std", d["std"].where(~lin, "nan")), "must be a finite")
    bad(lambda d: d.__setitem__("mean", d["mean"].where(~lin, "inf")), "mean='inf' is not a finite number")
    bad(lambda d: d.__setitem__("n", d["n"].where(~lin, "0")), "n='0' is not a whole number >= 1")
    bad(lambda d: d.__setitem__("metric", d["metric"].where(~lin, "top_1")), "metric='top_1' is not a known metric")
    bad(lambda d: d.__setitem__("fingerprint", d["fingerprint"].where(~lin, "{not json")), "fingerprint is not JSON")
    with pytest.raises(BaselineError, match="duplicated cells"):
        path = tmp_path / "dup.csv"
        pd.concat([rows, rows[lin]]).to_csv(path, index=False)
        read_baseline(path)
    with pytest.raises(BaselineError, match="does not exist"):
        read_baseline(tmp_path / "none.csv")


def test_a_wide_but_valid_baseline_spread_never_passes_a_30_point_drop(store, baseline, tmp_path):
    df = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    df.loc[df.protocol == "linear", "std"] = "50"
    path = tmp_path / "wide.csv"
    df.to_csv(path, index=False)
    for s, v in enumerate(SEEDS["can"]):
        _set_top1(store, f"can{s}", v - 30)
    cell = _cell(check(collect(store), path), "can")
    assert cell.verdict == "inconclusive" and check(collect(store), path).exit_code == 1


def test_write_baseline_refuses_unusable_results(store, tmp_path):
    _nan_seed(store, None)
    with pytest.raises(BaselineError, match="unusable.*not a finite number"):
        write_baseline(collect(store), tmp_path / "b.csv")
    with pytest.raises(BaselineError, match="no results"):
        (tmp_path / "empty").mkdir()
        write_baseline(collect(tmp_path / "empty"), tmp_path / "empty.csv")


def test_baseline_roundtrip(store, baseline):
    df = read_baseline(baseline)
    row = df[(df.method == "can") & (df.protocol == "linear") & (df.metric == "top1")].iloc[0]
    assert row["mean"] == pytest.approx(70.0667, abs=1e-3) and row["n"] == 3 and row["seeds"] == "0 1 2"
    assert row["fingerprint"]["pretrain.model.arch"] == "vit_micro"
    single = df[df.protocol == "finetune"].iloc[0]
    assert single["n"] == 1 and math.isnan(single["std"])
    assert not list(baseline.parent.glob(".baseline.csv.*"))  # atomic write left no temp file


def test_informational_fields_never_block(store, baseline):
    _edit(store / "can0" / "eval" / "linear.json",
          lambda r: r["fingerprint"].update(code_version="other", torch="9.9", device_type="cuda", commit="x"))
    assert check(collect(store), baseline).exit_code == 0


def test_reproduced_cells_without_a_reference_are_listed_not_failed(store, baseline):
    write_run(store, "knn0", "can", benchmark="smoke", evals={"knn": {"top1": 50.0}})
    r = check(collect(store), baseline)
    assert r.count("no reference") >= 1 and "have no reference value" in r.summary


def test_narrowing_is_explicit_and_stated(store, baseline, tmp_path):
    write_run(tmp_path / "t5", "x", "can", benchmark="table5", evals={"linear": {"top1": 1.0}})
    assert check(collect(store), baseline, benchmarks=["smoke"]).exit_code == 0
    with pytest.raises(BaselineError, match="no cells of --benchmark table5"):
        check(collect(store), baseline, benchmarks=["table5"])
    assert main(["check", str(store), "--against", "paper", "--benchmark", "nope"]) == 2


# ---- against the paper ------------------------------------------------------------------------------------
def test_paper_scale_cells_with_the_full_recipe_compare(tmp_path):
    """Runs with the paper's whole recipe (config from the paper grid, complete IN-1K identity, the paper's linear
    probe) compare with the paper: within the floor's tolerance they pass, 2 points lower they regress."""
    paper = {"none": 67.9, "augment_only": 68.6, "loss_without_sigma_embedding": 68.4, "full": 68.9}
    for mode, value in paper.items():
        for s, d in enumerate((-0.3, 0.2, 0.0)):
            write_paper_run(tmp_path, "table1_noise", f"can-noise{mode}", seed=s,
                            evals={"linear": {"top1": value + d}})
    r = check(collect(tmp_path), "paper", benchmarks=["table1"])
    assert r.exit_code == 0 and r.count("pass") == 4, r.message
    assert "compared 4 of 4 reference cells" in r.summary and "narrowed to --benchmark table1" in r.summary
    cell = r.cells[r.cells.variant == "full"].iloc[0]
    assert cell.tolerance == pytest.approx(quantile(0.05 / 4, math.inf) * 0.4 * math.sqrt(1 / 3 + 1))
    assert "floor" in cell.noise and "vissl#301" in cell.noise
    for s in range(3):
        _edit(tmp_path / f"can-noisefull-s{s}" / "eval" / "linear.json",
              lambda res: res["metrics"].__setitem__("top1", res["metrics"]["top1"] - 2))
    r = check(collect(tmp_path), "paper", benchmarks=["table1"])
    assert r.cells[r.cells.variant == "full"].iloc[0].verdict == "regression" and r.exit_code == 1
    # the whole paper is the default reference: the other 32 cells are missing, and say how to run them
    whole = check(collect(tmp_path), "paper")
    assert whole.reference_cells == 36 and whole.count("missing") == 32 and whole.exit_code == 1
    assert "canbench grid submit table3_in1k --scale paper" in whole.message


def test_smoke_runs_against_the_paper_are_incomparable_naming_each_key(tmp_path):
    write_run(tmp_path, "an", "can", benchmark="table5", method_cfg={"l_nce": 0.0}, evals={"linear": {"top1": 42.8}})
    r = check(collect(tmp_path), "paper", benchmarks=["table5"])
    an = r.cells[r.cells.variant == "AN"].iloc[0]
    assert an.verdict == "incomparable" and r.exit_code == 1
    assert "pretrain.model.arch vit_micro (paper vit_base)" in an.reason
    assert "pretrain.data.identity.name builtin (paper imagenet-1k)" in an.reason


def test_fig1_finetune_cells_compare_under_table2(tmp_path):
    for m, v in (("can", 86.1), ("simclr", 85.5), ("mae", 85.4)):
        write_paper_run(tmp_path, "table2_jft", f"{m}-vit_l-ep5000", evals={"finetune": {"top1": v - 0.05}})
    r = check(collect(tmp_path), "paper", benchmarks=["table2"])
    fig1 = r.cells[r.cells.table == "fig1"]
    assert len(fig1) == 3 and set(fig1.verdict) == {"pass"}
    # Table 2's linear cells: 8 never run (missing); the 3 of these runs lack their listed linear result (invalid)
    assert r.reference_cells == 14 and r.count("missing") == 8 and r.count("invalid") == 3


def test_jft_runs_compare_only_when_declared(tmp_path):
    write_paper_run(tmp_path, "table2_jft", "can-vit_l-ep5000", evals={"finetune": {"top1": 86.1}},
                    set_=["data.dataset=imagefolder"])
    r = check(collect(tmp_path), "paper", benchmarks=["table2"])
    cell = r.cells[(r.cells.table == "fig1") & (r.cells.method == "can")].iloc[0]
    assert cell.verdict == "incomparable" and "pretrain.data.identity.name imagenet-1k (paper jft-300m)" in \
        cell.reason


def test_a_stale_result_is_refused_until_reevaluated(tmp_path):
    run = write_paper_run(tmp_path, "table1_noise", "can-noisefull", evals={"linear": {"top1": 68.9}})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"]["noise_mode"] == "full"
    _edit(run / "summary.json", lambda r: r.__setitem__("checkpoint_sha256", "a" * 64))  # pretrain --force
    r = check(collect(tmp_path), "paper", benchmarks=["table1"])
    cell = r.cells[r.cells.variant == "full"].iloc[0]
    assert cell.verdict == "stale" and "rerun `canbench evaluate linear" in cell.reason
