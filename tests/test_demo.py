"""``canbench demo`` end to end on a tiny grid (debug executor, in-process): runs, report, baseline, check."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import yaml

from canbench.cli.demo import _progress, run_demo
from canbench.rundir import RunDir

TINY = {
    "name": "tiny", "benchmark": "smoke", "methods": ["can", "mae"], "seeds": [0, 1], "suites": ["knn"],
    "scales": {"smoke": {"preset": "smoke",
                         "overrides": {"optim.max_steps": 2, "data.builtin_size": 128, "optim.batch_size": 16,
                                       "train.log_every": 1},
                         "eval": {"data.test_size": 100, "knn.k": 5}}},
}


def test_demo_runs_reports_writes_baseline_and_catches_a_regression(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    root, pdf, baseline = tmp_path / "runs", tmp_path / "demo.pdf", tmp_path / "baseline.csv"
    kw = dict(root=root, out_pdf=pdf, baseline=baseline, executor="debug", grids=[str(spec)])

    assert run_demo(write_baseline=True, **kw) == 0
    runs = sorted((root / "tiny").glob("*/status.json"))
    assert len(runs) == 4 and all(RunDir(p.parent).read_status()["state"] == "done" for p in runs)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    rows = list(csv.DictReader(baseline.open()))
    knn = [r for r in rows if r["protocol"] == "knn" and r["metric"] == "top1"]
    assert sorted(r["method"] for r in knn) == ["can", "mae"] and all(r["n"] == "2" for r in knn)

    # a second demo reuses every finished run (their checkpoints are not rewritten) and passes its check
    mtimes = {p: (p.parent / "checkpoints" / "last.pt").stat().st_mtime_ns for p in runs}
    assert run_demo(**kw) == 0
    assert {p: (p.parent / "checkpoints" / "last.pt").stat().st_mtime_ns for p in runs} == mtimes

    # an older launch of can-s0 with another config, which failed, left in the same grid folder (what a
    # changed default leaves behind): superseded, so it neither fails the demo nor counts as a third seed
    src = next(p.parent for p in runs if p.parent.name.startswith("can-s0-"))
    stale = src.parent / "can-s0-0000000000"
    stale.mkdir()
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    assert cfg["extra"]["run_name"] == "can-s0"
    cfg["extra"]["run_id"], cfg["method"]["sigma_max"] = "0000000000", 0.2
    (stale / "config.yaml").write_text(yaml.safe_dump(cfg))
    (stale / "status.json").write_text('{"state": "failed", "reason": "planted"}')
    for f in stale.iterdir():
        os.utime(f, (1.0, 1.0))
    assert run_demo(**kw) == 0

    # a planted regression: the baseline expects 40 points more kNN accuracy for CAN than the runs have
    for r in rows:
        if r["method"] == "can" and r["protocol"] == "knn" and r["metric"] == "top1":
            r["mean"] = str(float(r["mean"]) + 40.0)
    with baseline.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert run_demo(**kw) == 1


def test_progress_labels() -> None:
    assert _progress({"state": "running", "step": 16, "total_steps": 48}) == "running@16/48"
    assert _progress({"state": "running", "step": 0}) == "running@0"
    assert _progress({"state": "running", "phase": "eval", "step": 48}) == "eval"
    assert _progress({"state": "done", "step": 48}) == "done"


def test_paper_flops_table_checks_the_vit_l_claim() -> None:
    from canbench.cli.demo import paper_flops_table
    from canbench.reports.claims import HOLDS, claim_flops

    table = paper_flops_table()
    assert set(table["method"]) == {"can", "simclr"} and set(table["arch"]) == {"vit_large"}
    c = claim_flops(None, table)
    assert c.verdict == HOLDS and abs(c.numbers["table_ratios"]["vit_large"] - 1.72) < 0.02
    assert "meta device" in c.scale and "meta device" in c.evidence


def test_random_init_reference_is_an_untrained_encoder_and_its_own_arm(tmp_path: Path) -> None:
    import torch

    from canbench.cli.demo import RANDOM_INIT_SUITES, random_init_reference
    from canbench.methods.backbone import build_encoder
    from canbench.reports.claims import evaluate_claims
    from canbench.reports.collect import RANDOM_INIT, collect
    from canbench.train.recipe import build_config

    tiny = ["model.img_size=16", "model.patch_size=4", "data.builtin_size=64", "extra.eval.data.test_size=40",
            "extra.eval.linear.batch_size=32"]
    run = random_init_reference(tmp_path, overrides=tiny)
    assert run == tmp_path / "random-init"
    # the checkpoint is the engine's initialisation at seed 0, never trained (naive reference: build it again)
    torch.manual_seed(0)
    fresh = build_encoder(build_config("can", "smoke", tiny).model).state_dict()
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 0
    for k, v in fresh.items():
        assert torch.equal(ckpt["model"][f"encoder.{k}"], v), k
    results = collect(tmp_path)
    top1 = results[results["metric"] == "top1"]
    assert sorted(top1["suite"]) == sorted(RANDOM_INIT_SUITES)
    assert set(top1["method"]) == {RANDOM_INIT} and set(top1["benchmark"]) == {"smoke"}
    # a reference, never an arm of a claim
    assert all(c.verdict == "not run" for c in evaluate_claims(results) if c.id != "flops_ratio")
    # done once: a second call reuses the results
    mtime = (run / "eval" / "linear.json").stat().st_mtime_ns
    random_init_reference(tmp_path, overrides=tiny)
    assert (run / "eval" / "linear.json").stat().st_mtime_ns == mtime
