"""Figures: right data on the axes; empty data gives a 'not run at this scale' figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from canbench.reports import figures
from canbench.reports.collect import EVAL_COLUMNS, PRETRAIN_COLUMNS, collect, collect_pretrain, loss_curves
from canbench.reports.synthetic import write_run


def _texts(fig: Figure) -> str:
    return " ".join(t.get_text() for t in fig.texts)


@pytest.mark.parametrize("make", [
    lambda e, p, c: figures.fig_accuracy_vs_compute(e, p), lambda e, p, c: figures.fig_fewshot(e),
    lambda e, p, c: figures.fig_robustness(e), lambda e, p, c: figures.fig_mask_ratio(e),
    lambda e, p, c: figures.fig_hparams(e), lambda e, p, c: figures.fig_loss_curves(c),
    lambda e, p, c: figures.fig_efficiency(p),
])
def test_empty_data_says_not_run(make):
    fig = make(pd.DataFrame(columns=EVAL_COLUMNS), pd.DataFrame(columns=PRETRAIN_COLUMNS), pd.DataFrame())
    assert isinstance(fig, Figure) and figures.NOT_RUN in _texts(fig)


@pytest.fixture
def store(tmp_path):
    for s, (a, b) in enumerate(((40.0, 38.0), (42.0, 36.0))):
        for m, r, v in (("can", 0.0, 38.0), ("can", 0.5, a), ("simclr", 0.0, 39.0), ("simclr", 0.5, b)):
            write_run(tmp_path, f"{m}{r}_{s}", m, seed=s, benchmark="fig6", method_cfg={"mask_ratio": r},
                      evals={"linear": {"top1": v},
                             "fewshot": {"results": [{"dataset": "dtd", "shots": k, "mean": v / 2, "std": 0}
                                                     for k in (1, 5, 10)]}},
                      flops=({"can": 1e9, "simclr": 2e9}[m], {"can": 3e9, "simclr": 6e9}[m]))
    return tmp_path


def test_mask_ratio_curves(store):
    fig = figures.fig_mask_ratio(collect(store))
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(lines) == {"CAN", "SimCLR†"}
    np.testing.assert_allclose(lines["CAN"].get_xdata(), [0.0, 0.5])
    np.testing.assert_allclose(lines["CAN"].get_ydata(), [38.0, 41.0])
    np.testing.assert_allclose(lines["SimCLR†"].get_ydata(), [39.0, 37.0])


def test_fewshot_panels_per_shot(store):
    fig = figures.fig_fewshot(collect(store))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["1-shot", "5-shot", "10-shot"]
    heights = sorted(round(p.get_height(), 3) for p in fig.axes[0].patches)
    assert heights == [19.0, 19.75]  # mean of top1/2 over each method's 4 runs: SimCLR 19.0, CAN 19.75


def test_accuracy_vs_compute_uses_total_flops(store):
    fig = figures.fig_accuracy_vs_compute(collect(store), collect_pretrain(store))
    xs = sorted(float(x) for c in fig.axes[0].containers for x in c.lines[0].get_xdata())
    # flops_train x steps (20) x batch (64)
    assert xs == pytest.approx([3e9 * 20 * 64, 6e9 * 20 * 64])


def test_efficiency_table_units(store):
    tab = figures.efficiency_table(collect_pretrain(store)).set_index("method")
    assert tab.loc["simclr", "train GFLOP/img"] == pytest.approx(6.0)
    assert tab.loc["can", "fwd GFLOP/img"] == pytest.approx(1.0)
    assert tab.loc["can", "n"] == 4 and tab.loc["can", "peak mem GiB"] == pytest.approx(1.0)
    assert list(tab.index) == ["can", "simclr"]


def test_hparam_sweeps_keep_other_axes_at_defaults(tmp_path):
    for v in (0.0, 0.03, 0.1):
        write_run(tmp_path, f"l{v}", "can", benchmark="fig7", method_cfg={"l_nce": v},
                  evals={"linear": {"top1": 10 + v}})
    write_run(tmp_path, "odd", "can", benchmark="fig7", method_cfg={"l_nce": 0.1, "lam": 0.3},
              evals={"linear": {"top1": 99.0}})
    res = collect(tmp_path)
    assert sorted(figures.hparam_sweep(res, "l_nce")["l_nce"]) == [0.0, 0.03, 0.1]
    assert sorted(figures.hparam_sweep(res, "lam")["lam"]) == [0.7]
    fig = figures.fig_hparams(res)
    assert figures.NOT_RUN in " ".join(t.get_text() for ax in fig.axes[1:] for t in ax.texts)


def test_loss_curves_one_line_per_run_and_term(store):
    fig = figures.fig_loss_curves(loss_curves(store))
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["loss"]
    assert len(fig.axes[0].get_lines()) == 8


def test_compute_figure_keeps_each_methods_main_setting_only():
    import pandas as pd

    from canbench.reports.figures import _main_setting

    df = pd.DataFrame({
        "method": ["can", "can", "can", "simclr"], "run_dir": ["a", "b", "c", "d"],
        "mask_ratio": [0.5, 0.5, 0.5, 0.0], "l_nce": [0.03, 0.03, 0.0, 1.0], "lam": [0.7, 0.7, 0.7, 1.0],
        "sigma_max": [0.05, 0.05, 0.05, 0.0], "noise_mode": ["full", "full", "full", "none"],
        "value": [30.0, 32.0, 10.0, 40.0]})
    kept = _main_setting(df)
    assert sorted(kept["run_dir"]) == ["a", "b", "d"]  # Table 5's AN run (l_nce 0) is not averaged into CAN
    assert kept[kept["method"] == "can"]["value"].mean() == 31.0
