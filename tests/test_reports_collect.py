"""Run-store loader: rows per metric cell, nested folders, partial and torn runs."""

from __future__ import annotations

import logging
import math

import pytest

from canbench.reports.collect import EVAL_COLUMNS, collect, collect_pretrain, loss_curves
from canbench.reports.synthetic import write_run
from canbench.rundir import find_runs

EVALS = {
    "linear": {"top1": 41.5, "top1_best": 42.0},
    "knn": {"top1": 30.0},
    "fewshot": {"results": [{"dataset": "cifar10", "shots": 5, "mean": 20.0, "std": 1.5, "seeds": [0, 1, 2]},
                            {"dataset": "dtd", "shots": 10, "mean": 25.0, "std": 0.5, "seeds": [0, 1, 2]}]},
    "finetune": {"top1": 50.0},
    "shift": {"results": [{"set": "imagenet_v2", "top1": 33.0}, {"set": "builtin_noise_blur", "top1": 21.0}]},
}


def _none(x):
    return None if isinstance(x, float) and math.isnan(x) else x


@pytest.fixture
def store(tmp_path):
    write_run(tmp_path / "a" / "b", "can0", "can", seed=3, benchmark="fig6", method_cfg={"mask_ratio": 0.25},
              axes={"method.mask_ratio": 0.25, "variant": "m25"}, evals=EVALS,
              final={"loss": 0.5, "infonce": 4.0, "rec": 0.2, "denoise": 0.01}, flops=(2e9, 6e9), gpu_hours=0.5)
    return tmp_path


def test_collect_one_row_per_metric_cell(store):
    df = collect(store)
    assert list(df.columns) == EVAL_COLUMNS
    got = {(r.suite, r.metric, _none(r.dataset), _none(r.shots)): r.value for r in df.itertuples()}
    assert got == {
        ("linear", "top1", None, None): 41.5, ("linear", "top1_best", None, None): 42.0,
        ("knn", "top1", None, None): 30.0, ("fewshot", "top1", "cifar10", 5): 20.0,
        ("fewshot", "top1", "dtd", 10): 25.0, ("finetune", "top1", None, None): 50.0,
        ("shift", "top1", "imagenet_v2", None): 33.0, ("shift", "top1", "builtin_noise_blur", None): 21.0,
        ("pretrain", "loss", None, None): 0.5, ("pretrain", "infonce", None, None): 4.0,
        ("pretrain", "rec", None, None): 0.2, ("pretrain", "denoise", None, None): 0.01,
    }
    row = df[(df.suite == "fewshot") & (df.dataset == "cifar10")].iloc[0]
    assert row.cell_std == 1.5
    assert (row.run_id, row.run_name, row.method, row.arch, row.seed, row.benchmark, row.scale) == (
        "synthetic-can0", "can0", "can", "vit_micro", 3, "fig6", "smoke")
    assert row.mask_ratio == 0.25 and row.l_nce == 0.03 and row.pretrain_data == "builtin"
    assert row.grid == {"method": "can", "method.mask_ratio": 0.25, "variant": "m25"} and row.variant == "m25"
    assert row.fingerprint["pooling"] == "avg" and row.fingerprint["dataset"] == "builtin"
    assert row.recipe["model.arch"] == "vit_micro" and row.recipe["optim.max_steps"] == 20
    assert row.data_identity == {"name": "builtin", "split": "train", "version": None, "size": None}
    assert row.checkpoint_step == 20


def test_collect_without_pretrain_rows(store):
    assert "pretrain" not in set(collect(store, include_pretrain=False)["suite"])


def test_find_runs_any_depth_and_not_inside_eval(tmp_path, store):
    (store / "a" / "b" / "can0" / "eval" / "config.yaml").write_text("method: {name: can}\n")
    assert [r.path for r in find_runs(store)] == [store / "a" / "b" / "can0"]


def test_collect_pretrain_and_loss_curves(store):
    p = collect_pretrain(store)
    assert len(p) == 1
    r = p.iloc[0]
    assert (r.flops_forward, r.flops_train, r.gpu_hours, r.steps) == (2e9, 6e9, 0.5, 20)
    assert (r.final_loss, r.final_infonce, r.final_rec, r.final_denoise) == (0.5, 4.0, 0.2, 0.01)
    c = loss_curves(store)
    assert len(c) == 5 and c["step"].is_monotonic_increasing
    assert set(c["run_name"]) == {"can0"} and c["rec"].notna().all()


def test_torn_files_are_skipped_with_a_warning(tmp_path, caplog):
    ok = write_run(tmp_path, "ok", "mae", evals={"linear": {"top1": 10.0}, "knn": {"top1": 5.0}})
    torn = write_run(tmp_path, "torn", "simclr", evals={"linear": {"top1": 12.0}})
    (ok / "eval" / "knn.json").write_text('{"suite": "knn", "metr')  # a crash mid-write
    (torn / "config.yaml").write_text("model: {arch: [unclosed\n")
    (ok / "summary.json").write_text("{")
    with (ok / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "lo')
    with caplog.at_level(logging.WARNING):
        df = collect(tmp_path)
        pre = collect_pretrain(tmp_path)
        curves = loss_curves(tmp_path)
    # the torn run is gone (no config: nothing says what it was); the torn knn result stays as a marker row
    # that fails its cells downstream, never a silently smaller n
    assert set(zip(df.run_name, df.suite)) == {("ok", "linear"), ("ok", "knn")}
    marker = df[df.suite == "knn"].iloc[0]
    assert marker.error.startswith("unreadable result") and str(ok / "eval" / "knn.json") in marker.error
    assert df[df.suite == "linear"].error.isna().all()
    assert len(pre) == 0 and len(curves) == 5 and 99 not in set(curves.step)
    text = caplog.text
    assert str(ok / "eval" / "knn.json") in text and str(torn) in text and "summary.json" in text


def test_partial_runs_do_not_crash(tmp_path, caplog):
    write_run(tmp_path, "running", "can", state="running")  # no summary, no eval
    (tmp_path / "no_config").mkdir()
    (tmp_path / "no_config" / "status.json").write_text("{}")
    (tmp_path / "nometh").mkdir()
    (tmp_path / "nometh" / "config.yaml").write_text("model: {arch: vit_micro}\n")
    with caplog.at_level(logging.WARNING):
        assert len(collect(tmp_path)) == 0
        assert len(collect_pretrain(tmp_path)) == 0
    assert len(loss_curves(tmp_path)) == 5
    assert "no method.name" in caplog.text


def test_empty_and_missing_roots(tmp_path):
    assert list(collect(tmp_path).columns) == EVAL_COLUMNS and len(collect(tmp_path)) == 0
    assert len(loss_curves(tmp_path)) == 0
    with pytest.raises(FileNotFoundError, match="nope"):
        collect(tmp_path / "nope")


def test_non_numeric_metrics_become_nan_not_crash(tmp_path):
    write_run(tmp_path, "r", "can", evals={"fewshot": {"results": [{"dataset": "x", "shots": 1, "mean": None}]}})
    df = collect(tmp_path)
    v = df[df.suite == "fewshot"].value.iloc[0]
    assert math.isnan(v)


@pytest.mark.parametrize("extra,paper_arch,paper_epochs,grid", [
    ({"axes": {"method": "can", "preset": "vit_l", "optim.epochs": 800}}, "vit_large", 800,
     {"method": "can", "preset": "vit_l", "optim.epochs": 800}),
    ({"axes": {"preset": "vit_b_in1k", "model.arch": "vit_huge", "optim.epochs": 5}}, "vit_huge", 5,
     {"preset": "vit_b_in1k", "model.arch": "vit_huge", "optim.epochs": 5}),
    # the run record is typed: a mapping where the grid's name belongs is ignored, not read as axes
    ({"grid": {"method.lam": 0.5}}, None, None, {}),
    ({"grid": "table3_in1k"}, None, None, {}),
])
def test_grid_axes_and_paper_row(tmp_path, extra, paper_arch, paper_epochs, grid):
    import yaml

    run = write_run(tmp_path, "r", "can", evals={"knn": {"top1": 1.0}})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["extra"] = {"benchmark": "table3", **extra}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    row = collect(tmp_path).iloc[0]
    assert (row.paper_arch, row.paper_epochs, row.grid) == (paper_arch, paper_epochs, grid)
    assert row.grid_name == (extra["grid"] if isinstance(extra.get("grid"), str) else None)


def test_superseded_grid_runs_are_skipped_with_a_warning(tmp_path, caplog):
    """The same grid run (name, seed) launched again with another config: report the latest only."""
    import os

    old = write_run(tmp_path, "can-s0-aaaa", "can", extra={"run_name": "can-s0", "run_id": "aaaa"},
                    evals={"linear": {"top1": 10.0}})
    new = write_run(tmp_path, "can-s0-bbbb", "can", extra={"run_name": "can-s0", "run_id": "bbbb"},
                    method_cfg={"sigma_max": 0.1}, evals={"linear": {"top1": 20.0}})
    other = write_run(tmp_path, "can-s1-cccc", "can", seed=1, extra={"run_name": "can-s1", "run_id": "cccc"},
                      evals={"linear": {"top1": 30.0}})
    for i, run in enumerate((new, other, old)):  # old: the earliest activity
        for f in run.iterdir():
            if f.is_file():
                os.utime(f, (1000.0 + 100 * (run is not old) + i, 1000.0 + 100 * (run is not old) + i))
    with caplog.at_level(logging.WARNING):
        df = collect(tmp_path, include_pretrain=False)
        pre = collect_pretrain(tmp_path)
    lin = df[df.suite == "linear"].set_index("run_dir")["value"].to_dict()
    assert lin == {str(new): 20.0, str(other): 30.0}
    assert sorted(pre.run_dir) == sorted([str(new), str(other)])
    assert "2 runs named 'can-s0'" in caplog.text and "skipping can-s0-aaaa" in caplog.text
    assert "config differs in: method.sigma_max" in caplog.text
    # two folders of one run name but the same run id (a copy): not a supersession, both kept
    write_run(tmp_path / "copy", "x", "mae", extra={"run_name": "mae-s0", "run_id": "dddd"})
    write_run(tmp_path / "copy", "y", "mae", extra={"run_name": "mae-s0", "run_id": "dddd"})
    assert len(collect_pretrain(tmp_path / "copy")) == 2
