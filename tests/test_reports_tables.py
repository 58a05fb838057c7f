"""Run -> cell mapping, comparability against the paper protocol, table renderers."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from canbench.io import read_json, write_json
from canbench.reports.cells import ablation_label, aggregate, cell_key, to_cells
from canbench.reports.collect import collect
from canbench.reports.synthetic import write_paper_run, write_run
from canbench.reports.tables import build_table, build_views, render, to_text


@pytest.mark.parametrize("l_nce,lam,sigma,mode,label", [
    (0.03, 0.7, 0.05, "full", "CAN"), (0.0, 0.7, 0.05, "full", "AN"), (0.03, 0.0, 0.05, "full", "CN"),
    (0.03, 0.7, 0.0, "none", "CA"), (0.03, 0.7, 0.05, "none", "CA"), (0.03, 1.0, 0.05, "full", "CA"),
    (1.0, 1.0, 0.0, "none", "C"), (0.0, 1.0, 0.0, "none", "A"), (0.03, 0.7, 0.05, "augment_only", "CA"),
])
def test_ablation_label(l_nce, lam, sigma, mode, label):
    assert ablation_label(l_nce, lam, sigma, mode) == label


def test_cell_key_mapping():
    base = {"method": "can", "arch": "vit_micro", "pretrain_data": "builtin", "epochs": 2.0, "suite": "linear",
            "metric": "top1", "noise_mode": "augment_only", "l_nce": 0.03, "lam": 0.7, "sigma_max": 0.05,
            "mask_ratio": 0.25}
    k1 = cell_key({**base, "benchmark": "table1"})
    assert (k1["table"], k1["arch"], k1["pretrain_data"], k1["epochs"], k1["variant"]) == (
        "table1", "vit_base", "in1k", "100", "augment_only")
    k3 = cell_key({**base, "benchmark": "table3", "paper_arch": "vit_large", "paper_epochs": 800})
    assert (k3["arch"], k3["epochs"], k3["pretrain_data"]) == ("vit_large", "800", "in1k")
    k6 = cell_key({**base, "benchmark": "fig6"})
    assert (k6["variant"], k6["arch"], k6["epochs"]) == ("mask_ratio=0.25", "vit_micro", "2")
    k4 = cell_key({**base, "benchmark": "table4", "suite": "pretrain", "metric": "infonce"})
    assert (k4["protocol"], k4["metric"]) == ("train_loss", "contrastive_loss")
    kx = cell_key({**base, "benchmark": None, "variant": "mine"})
    assert (kx["table"], kx["variant"], kx["arch"]) == ("unassigned", "mine", "vit_micro")


def _paper_t5(root, values, edit=None):
    """Table 5's AN cell made with the paper's whole recipe (``edit`` changes each result's fingerprint)."""
    for s, v in enumerate(values):
        run = write_paper_run(root, "table5_ablation", "can-AN", seed=s, evals={"linear": {"top1": v}})
        if edit is not None:
            res = read_json(run / "eval" / "linear.json")
            edit(res["fingerprint"])
            write_json(run / "eval" / "linear.json", res)
    return collect(root)


def test_paper_scale_cell_is_compared(tmp_path):
    view = build_views(_paper_t5(tmp_path, [42.0, 43.0]), "table5")[0]
    cell = view.cells.set_index("row").loc["AN"]
    assert cell.status == "compared" and cell.n == 2
    assert cell["diff"] == pytest.approx(42.5 - 42.8)
    assert view.rows[0] == ["AN", "42.8", "42.50 ± 0.71 (n=2)", "-0.30"]
    assert view.cells.set_index("row").loc["CN"].status == "not run"


def test_protocol_mismatch_is_marked_not_compared(tmp_path):
    def edit(fp):
        fp["eval_config"]["mode"] = "cached_features"
        fp["eval_data"]["train"]["identity"]["images"] = 128_116

    view = build_views(_paper_t5(tmp_path, [42.0], edit=edit), "table5")[0]
    cell = view.cells.set_index("row").loc["AN"]
    assert cell.status == "incomparable" and pd.isna(cell["diff"])
    assert "linear.mode cached_features (paper full)" in cell.reason
    assert "eval.data.train.identity.images 128116 (paper 1281167)" in cell.reason
    assert view.rows[0][3].startswith("n/c [") and any(cell.reason in n for n in view.notes)


def test_unusable_results_are_shown_not_compared(tmp_path):
    view = build_views(_paper_t5(tmp_path, [42.0, float("nan")]), "table5")[0]
    cell = view.cells.set_index("row").loc["AN"]
    assert cell.status == "invalid" and "1 of 2 results unusable" in cell.reason and pd.isna(cell["diff"])
    assert view.rows[0][3].startswith("invalid [")


def test_smoke_scale_says_why(tmp_path):
    write_run(tmp_path, "full", "can", benchmark="table1", evals={"linear": {"top1": 30.0}})
    view = build_views(collect(tmp_path), "table1")[0]
    cell = view.cells.set_index("column").loc["Full"]
    assert cell.status == "incomparable"
    for part in ("pretrain.model.arch vit_micro (paper vit_base)",
                 "pretrain.data.identity.name builtin (paper imagenet-1k)",
                 "pretrain.optim.epochs 1 (paper 100)", "pretrain.optim.max_steps 20 (paper none)"):
        assert part in cell.reason
    assert view.cells.set_index("column").loc["None"].status == "not run"


def test_garbled_cell_note_and_shape(tmp_path):
    view = build_table("table1", aggregate(to_cells(collect(tmp_path))))
    assert view.header[:4] == ["Method", "None paper", "None reproduced", "None Δ"]
    assert view.rows[0][4].startswith("68.6 [") and any("garbled" in n for n in view.notes)
    t3 = build_table("table3", aggregate(to_cells(collect(tmp_path))))
    assert len(t3.rows) == 18 and t3.rows[2][:2] == ["MoCo-v3 ViT-B 300 ep", "83.0"]


def test_extra_reproduced_rows_are_appended(tmp_path):
    write_run(tmp_path, "c", "can", benchmark="table3", evals={"linear": {"top1": 30.0}, "finetune": {"top1": 40.0}})
    view = build_views(collect(tmp_path), "table3")[0]
    assert view.rows[-1][0] == "CAN ViT-micro 1 ep"
    last = view.cells[view.cells["row"] == "CAN ViT-micro 1 ep"]
    assert set(last.status) == {"no paper number"} and set(last["mean"]) == {30.0, 40.0}


def test_formats(tmp_path):
    views = build_views(_paper_t5(tmp_path, [42.0, 43.0]), "table5")
    md = render(views, "md")
    assert "| AN | 42.8 | 42.50 ± 0.71 (n=2) | -0.30 |" in md
    tex = render(views, "tex")
    assert r"\begin{tabular}{lrrr}" in tex and r"42.50 $\pm$ 0.71 (n=2)" in tex and "top-1 \\%" in tex
    csv = pd.read_csv(io.StringIO(render(views, "csv")))
    assert len(csv) == 4 and csv.set_index("row").loc["AN", "paper"] == 42.8
    with pytest.raises(ValueError, match="unknown table format 'xls'"):
        render(views, "xls")


def test_non_paper_benchmark_listing(tmp_path):
    write_run(tmp_path, "s", "mae", benchmark="smoke", evals={"knn": {"top1": 12.345}})
    views = build_views(collect(tmp_path))
    listing = [v for v in views if v.name == "results:smoke"][0]
    assert listing.rows == [["MAE†", "knn", "top1", "12.35 (n=1)"], ["MAE†", "train_loss", "loss", "1 (n=1)"]]
    assert listing.title.endswith("arch ViT-micro, data builtin, epochs 1")


def test_text_rendering_fits_the_width_and_keeps_every_value(tmp_path):
    write_run(tmp_path, "full", "can", benchmark="table1", evals={"linear": {"top1": 30.123}})
    view = build_views(collect(tmp_path), "table1")[0]
    lines = to_text(view, width=80)
    assert max(len(ln) for ln in lines) <= 80
    text = "\n".join(lines)
    for needle in ("67.9", "68.6", "68.4", "68.9", "30.12 (n=1)", "+noise, +loss"):
        assert needle in text


def test_paper_scale_finetune_and_linear_compared(tmp_path):
    write_paper_run(tmp_path, "table3_in1k", "can-vit_b-ep800", evals={"linear": {"top1": 73.0},
                                                                        "finetune": {"top1": 83.5}})
    cells = build_views(collect(tmp_path), "table3")[0].cells
    row = cells[(cells["row"] == "CAN ViT-B 800 ep")].set_index("column")
    assert list(row.status) == ["compared", "compared"]
    assert row.loc["Finetune", "diff"] == pytest.approx(83.5 - 83.4)
    assert row.loc["Linear probe", "diff"] == pytest.approx(73.0 - 74.0)


def test_table2_shows_fig1_finetune_numbers(tmp_path):
    write_paper_run(tmp_path, "table2_jft", "can-vit_l-ep5000", evals={"linear": {"top1": 75.0},
                                                                        "finetune": {"top1": 86.0}})
    view = build_views(collect(tmp_path), "table2")[0]
    assert view.header[-3:] == ["Finetune (Fig. 1) paper", "Finetune (Fig. 1) reproduced", "Finetune (Fig. 1) Δ"]
    row = next(r for r in view.rows if r[0] == "CAN ViT-L 5000 ep")
    assert row[1:] == ["75.4", "75.00 (n=1)", "-0.40", "86.1", "86.00 (n=1)", "-0.10"]
    mae = next(r for r in view.rows if r[0] == "MAE† ViT-L 5000 ep")
    assert mae[4] == "85.4" and mae[5] == "—"


def test_missing_labels_in_a_mixed_store_are_not_nan(tmp_path):
    """pandas turns None into NaN once a column mixes strings and None; NaN must not become a label."""
    write_run(tmp_path, "an", "can", benchmark="table5", axes={"variant": "AN"}, method_cfg={"l_nce": 0.0},
              evals={"linear": {"top1": 1.0}})
    write_run(tmp_path, "t3", "can", benchmark="table3", axes={"preset": "vit_b", "optim.epochs": 800},
              evals={"linear": {"top1": 2.0}})
    for r in (0.0, 0.5):
        write_run(tmp_path, f"m{r}", "can", benchmark="fig6", method_cfg={"mask_ratio": r},
                  evals={"linear": {"top1": 3.0}})
    write_run(tmp_path, "x", "mae", evals={"knn": {"top1": 4.0}})
    cells = to_cells(collect(tmp_path))
    assert "nan" not in set(cells["variant"]) | set(cells["table"]) | set(cells["arch"]) | set(cells["epochs"])
    assert {"AN", "mask_ratio=0", "mask_ratio=0.5"} <= set(cells["variant"])
    t3 = cells[cells["table"] == "table3"].iloc[0]
    assert (t3["arch"], t3["epochs"]) == ("vit_base", "800")
    assert "unassigned" in set(cells["table"])
