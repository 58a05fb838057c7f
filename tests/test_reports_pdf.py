"""PDF report: what the pages say (text extracted with pypdf), not how many there are.

The summary on page 1 (what ran, verdict counts, claims, the largest regressions, the references), the paper's
tables typeset as rows, tables without runs gathered into one "not run" list, random-init and chance references,
each figure drawn once, device-hours on CPUs, and the provenance page (run ids, config fingerprints, the
command line of each grid); atomic writes.
"""

from __future__ import annotations

import re
import sys

import pandas as pd
import pytest
from pypdf import PdfReader

from canbench.reports import figures, pdf
from canbench.reports.check import check, write_baseline
from canbench.reports.collect import RANDOM_INIT, collect, collect_pretrain
from canbench.reports.synthetic import demo_store, write_run


def _texts(path) -> list[str]:
    """The text of every page, in order."""
    return [p.extract_text() for p in PdfReader(str(path)).pages]


def _flat(t: str) -> str:
    return re.sub(r"\s+", " ", t)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = demo_store(tmp_path_factory.mktemp("demo"), seeds=(0,))
    # an untrained encoder of the smoke model: linear 35.0, between MAE (~30) and CAN (~40)
    write_run(root / "smoke", "random-init", "can", benchmark="smoke", extra={"random_init": True},
              evals={"linear": {"top1": 35.0}})
    return root


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    """The full report with a check against a baseline in which CAN's smoke linear probe was 6 points higher."""
    out = tmp_path_factory.mktemp("out")
    base = write_baseline(collect(store), out / "base.csv")
    sel = (base["table"] == "smoke") & (base["method"] == "can") & (base["protocol"] == "linear") \
        & (base["metric"] == "top1")
    assert sel.sum() == 1
    base.loc[sel, "mean"] += 6.0
    base.to_csv(out / "base.csv", index=False)
    result = check(collect(store), out / "base.csv")
    return pdf.build_report(store, out / "r.pdf", title="test report", check_result=result), result


def test_page_one_is_a_summary(report, store):
    path, result = report
    first = _flat(_texts(path)[0])
    assert first.startswith("test report") and f"results {store}" in first
    # what ran, at what scale: benchmark, scale, model and data, steps (never "max_steps nan")
    assert re.search(r"smoke smoke ViT-micro \(32 px\) on builtin 20 steps = 1 ep CAN, SimCLR†, MAE†, random init "
                     r"3 \(3 done\) \+ 1 random init", first), first
    assert "nan" not in first
    # verdict counts: the baseline check (FAIL, 1 regression) and the paper comparison
    assert "FAIL" in first and "1 regression" in first and f"compared {result.compared} of" in first
    assert re.search(r"Against the paper: \d+ of its 36 cells", first)
    # claims at a glance: the counts and the judged claims
    assert re.search(r"Claims at a glance 11 holds, 0 does not hold, 6 inconclusive, 8 not run\. .* inconclusive "
                     r"Noise as augmentation alone helps: \+noise > None \(Table 1 / Sec\. 3\.4\) smoke scale", first)
    # the largest regression names the cell, its reference, numbers and verdict
    assert re.search(r"Largest regressions Regressions .*smoke/can/vit_micro/builtin/1ep/linear/top1 "
                     r"base\.csv [\d.]+ [\d.]+ \(n=1\) -6 [\d.]+ regression", first), first
    # references: random init and chance, and who is below the untrained encoder
    assert "random init 35.0 (n=1); chance 10.0" in first and "Below the untrained encoder: MAE†" in first


def test_paper_tables_are_typeset_and_unrun_tables_listed_once(report):
    texts = [_flat(t) for t in _texts(report[0])]
    body = " ".join(texts[1:])
    # Table 5 in the paper's shape: variant | paper | reproduced (mean ± std, n) | difference | verdict
    assert "Table 5: ablating CAN's loss terms" in body
    assert re.search(r"Variant Paper Reproduced \(mean ± std, n\) Δ Verdict AN 42\.8 [\d.]+ \(n=1\) n/c \[1\] "
                     r"incomparable", body), body[:3000]
    assert "[1] protocol differs from the paper's: pretrain." in body  # the footnote names the keys
    # tables 2 and 3 have no runs: one "not run" list with the grid that runs each, no empty tables
    notrun = body[body.index("Not run"):]
    assert "Table 2: JFT-300M pretraining" in notrun and "canbench grid submit table2_jft" in notrun
    assert "Table 3: IN-1K pretraining" in notrun and "canbench grid submit table3_in1k" in notrun
    assert body.count("Table 2: JFT-300M pretraining") == 1 and "(0 runs)" not in body


def test_benchmark_matrix_carries_random_init_and_chance(report):
    body = " ".join(_flat(t) for t in _texts(report[0]))
    assert re.search(r"Protocol Metric Set Shots CAN SimCLR† MAE† random init chance", body)
    assert re.search(r"linear top1 [\d.]+ \(n=1\) [\d.]+ \(n=1\) [\d.]+ \(n=1\) 35\.00 \(n=1\) 10\.0", body)
    assert re.search(r"fewshot top1 cifar10 1 [\d.]+ \(n=1\) [\d.]+ \(n=1\) [\d.]+ \(n=1\) — 10\.0", body)


def test_each_figure_once_and_units_and_claims_and_check(report):
    texts = _texts(report[0])
    assert sum("vs training compute" in t for t in texts) == 1
    assert sum("Masking rate (Fig. 6 style)" in t for t in texts) == 1
    body = " ".join(_flat(t) for t in texts)
    assert "GPU-hours (device" not in body and "CPU device-hours" in body  # the synthetic runs are on CPU
    assert re.search(r"method arch device n fwd GFLOP/img train GFLOP/img img/s device-hours peak mem GiB "
                     r"CAN ViT-micro 1 x cpu", body)
    assert "[HOLDS] At 50% masking CAN ends with a lower contrastive loss than SimCLR" in body
    assert "claims not run" in body
    assert "not recorded (submitted before canbench recorded command lines" in body  # no commands.jsonl there
    assert re.search(r"smoke/can/vit_micro/builtin/1ep/linear/top1 [\d.]+ [\d.]+ \(n=1\) -6 [\d.]+ regression",
                     body)


def test_accuracy_vs_compute_references_and_one_point_per_training(store, tmp_path):
    results, pretrain = collect(store), collect_pretrain(store)
    fig = figures.fig_accuracy_vs_compute(results, pretrain)
    refs = {ln.get_label(): ln.get_ydata()[0] for ln in fig.axes[0].lines if ln.get_label().startswith(("random",
                                                                                                         "chance"))}
    assert refs == {"random init 35.0 (n=1)": 35.0, "chance 10.0": 10.0}
    assert fig.axes[1].get_xlabel() == "CPU device-hours"
    # the same training reached through two benchmarks is one sample, not two
    res = results[results["benchmark"] == "smoke"]
    twice = pd.concat([res, res.assign(benchmark="table4", run_dir=res["run_dir"] + "-copy")])
    assert len(figures.dedupe_trainings(twice)) == len(res)
    assert RANDOM_INIT in set(res["method"])


def test_provenance_lists_runs_fingerprints_and_grid_commands(store, tmp_path, monkeypatch):
    from canbench.slurm.control import record_command

    monkeypatch.setattr(sys, "argv", ["canbench", "grid", "submit", "smoke", "--scale", "smoke"])
    record_command(store / "smoke", "smoke", "smoke", "local", ["optim.epochs=1"])
    try:
        texts = _texts(pdf.build_report(store, tmp_path / "p.pdf", benchmark="smoke"))
    finally:
        (store / "smoke" / pdf.COMMANDS_FILE).unlink()
    body = " ".join(_flat(t) for t in texts)
    prov = body[body.rindex("Provenance This report:"):]
    assert "Code versions of the runs: synthetic" in prov
    assert "canbench grid submit smoke --scale smoke" in prov
    pre = collect_pretrain(store)
    recipe = pre[(pre["run_name"] == "can_s0") & (pre["benchmark"] == "smoke")]["recipe"].iloc[0]
    assert re.search(r"smoke can_s0 synthetic-can_s0 " + pdf.config_fingerprint(recipe) + r" done 20 1 x cpu", prov)
    assert "random-init synthetic-random-init" in prov and "untrained" in prov


def test_submit_grid_records_its_command_line(tmp_path, monkeypatch):
    from canbench.io import read_jsonl
    from canbench.slurm import control
    from canbench.slurm.grid import parse_spec

    tiny = {"optim.max_steps": 1, "model.img_size": 16, "model.patch_size": 4, "data.builtin_size": 32,
            "optim.batch_size": 8, "model.decoder_dim": 32, "model.decoder_depth": 1, "model.decoder_heads": 2,
            "train.device": "cpu", "train.count_flops": False}
    spec = parse_spec({"name": "rec", "benchmark": "smoke", "methods": ["mae"], "seeds": [0], "suites": [],
                       "scales": {"smoke": {"preset": "smoke", "overrides": tiny,
                                            "resources": {"timeout_min": 5, "cpus_per_task": 1}}}})
    monkeypatch.setattr(sys, "argv", ["/usr/bin/canbench", "grid", "submit", "rec.yaml", "--executor", "debug"])
    control.submit_grid(spec, executor="debug", root=tmp_path / "g", overrides=["optim.epochs=1"])
    (line,) = read_jsonl(tmp_path / "g" / control.COMMANDS_FILE)
    assert line["command"] == "canbench grid submit rec.yaml --executor debug"
    assert line["grid"] == "rec" and line["executor"] == "debug" and line["overrides"] == ["optim.epochs=1"]
    assert line["code_version"] and line["cwd"]


def test_single_benchmark_and_empty_store(store, tmp_path):
    texts = [_flat(t) for t in _texts(pdf.build_report(store, tmp_path / "fig6.pdf", benchmark="fig6"))]
    assert "(benchmark fig6)" in texts[0] and re.search(r"fig6 smoke ViT-micro \(32 px\) on builtin", texts[0])
    assert any("Masking rate (Fig. 6 style)" in t and "mask ratio" in t for t in texts)
    assert not any("Table 5: ablating" in t for t in texts)
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = [_flat(t) for t in _texts(pdf.build_report(empty, tmp_path / "e.pdf"))]
    assert f"No runs under {empty}." in texts[0]
    assert "No cell was compared with a reference" in texts[0]
    body = " ".join(texts)
    for t in ("Table 1: denoising ablation", "Table 4: final training losses", "Table 5: ablating"):
        assert t in body[body.index("Not run"):]
    assert "Pretraining efficiency not run at this scale" in body
    assert "[NOT RUN]" not in body and "canbench grid submit table5_ablation" in body


def test_failed_build_leaves_no_file(store, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "efficiency_table", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        pdf.build_report(store, tmp_path / "x.pdf", benchmark="table5")
    assert list(tmp_path.iterdir()) == []


def test_random_init_comparison_states_its_noise_and_keeps_small_differences_inside_it():
    """The summary's "below the untrained encoder" is a verdict: it uses the methods' pooled seed std (a naive
    t-interval computed here) and says so; a difference inside that interval is reported as within the noise."""
    import math

    import pandas as pd
    from scipy import stats

    from canbench.reports import pdf

    rows = [("can", 40.0), ("can", 41.0), ("mae", 35.5), ("mae", 35.5), ("simclr", 30.0), ("simclr", 31.0),
            (pdf.RANDOM_INIT, 35.0)]
    d = pd.DataFrame([{"benchmark": "smoke", "suite": "linear", "metric": "top1", "method": m, "value": v,
                       "run_dir": f"r{i}", "dataset": "builtin", "shots": None, "pretrain_data": "builtin"}
                      for i, (m, v) in enumerate(rows)])
    sd = math.sqrt((0.5 + 0.0 + 0.5) / 3)  # pooled over three methods of two seeds each, df 3
    tol = stats.t.ppf(0.975, 3) * sd * math.sqrt(1 / 2 + 1 / 1)
    noise, tols = pdf._random_init_noise(d)
    assert noise.sd == pytest.approx(sd) and noise.df == 3 and tols["mae"] == pytest.approx(tol)
    (line,) = pdf._reference_lines(d)
    assert "Below the untrained encoder: SimCLR" in line and "within the noise of it: MAE" in line
    assert "pooled seed std" in line and "CAN" not in line.split("Below")[1]
