"""The statistical rule, tested statistically: seed draws around a reference (fixed seed, several hundred draws)
pass at least 95 % of unshifted cells and flag at least 80 % of cells shifted by a stated effect; the rates are
printed (run with ``-s`` to see them; docs/reports.md quotes them). Plus the noise model's arithmetic against a
naive reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from canbench.reports.check import check, write_baseline
from canbench.reports.collect import EVAL_COLUMNS, collect
from canbench.reports.noise import FLOORS, INCONCLUSIVE, PASS, REGRESSION, Noise, pooled, quantile, tolerance, verdict
from canbench.reports.synthetic import write_paper_run

SIGMA = 0.4  # seed-to-seed spread of one cell: the linear-probe noise floor (vissl#301)
CELLS, SEEDS, DRAWS = 20, 3, 300
SHIFT_BASELINE = 1.5  # points (3.75 sigma): the effect the baseline check must detect
SHIFT_PAPER = 2.0  # points (5 sigma, the paper's single run adds its own noise): the effect the paper check detects


def _rows(values: np.ndarray) -> pd.DataFrame:
    """A collect()-shaped frame: CELLS cells x SEEDS seeds of one linear-probe recipe."""
    recipe = {"model.arch": "vit_micro"}
    rows = []
    for c in range(values.shape[0]):
        for s in range(values.shape[1]):
            row = {k: None for k in EVAL_COLUMNS}
            row.update(run_dir=f"/sim/{c}/{s}", run_id=f"c{c}s{s}", method="can", arch="vit_micro", seed=s,
                       benchmark="sim", scale="smoke", variant=f"cell{c}", pretrain_data="builtin", epochs=1.0,
                       suite="linear", metric="top1", value=float(values[c, s]), recipe=recipe,
                       data_identity={"name": "builtin"}, fingerprint={"epochs": 5}, code_version="sim")
            rows.append(row)
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def test_the_baseline_check_passes_unshifted_cells_and_flags_shifted_ones(tmp_path):
    rng = np.random.default_rng(20261205)
    verdicts = {"unshifted": [], "shifted": []}
    base = tmp_path / "b.csv"
    for _ in range(DRAWS):
        mu = rng.uniform(30, 70, size=(CELLS, 1))
        write_baseline(_rows(mu + SIGMA * rng.standard_normal((CELLS, SEEDS))), base)
        for name, delta in (("unshifted", 0.0), ("shifted", -SHIFT_BASELINE)):
            res = check(_rows(mu + delta + SIGMA * rng.standard_normal((CELLS, SEEDS))), base)
            verdicts[name] += list(res.cells["verdict"])
    pass_rate = np.mean([v == PASS for v in verdicts["unshifted"]])
    detect = np.mean([v == REGRESSION for v in verdicts["shifted"]])
    print(f"\nbaseline check, {DRAWS} draws x {CELLS} cells, {SEEDS} seeds per side, seed sd {SIGMA}: "
          f"unshifted cells pass {pass_rate:.1%}; cells {SHIFT_BASELINE} points lower flagged {detect:.1%}")
    assert pass_rate >= 0.95 and detect >= 0.80


def test_the_paper_check_on_the_floor_passes_unshifted_cells_and_flags_shifted_ones(tmp_path):
    """One paper number per cell (its own run noise is the floor's), three reproduced seeds."""
    paper = {"none": 67.9, "augment_only": 68.6, "loss_without_sigma_embedding": 68.4, "full": 68.9}
    for mode in paper:
        for s in range(SEEDS):
            write_paper_run(tmp_path, "table1_noise", f"can-noise{mode}", seed=s, evals={"linear": {"top1": 0.0}})
    template = collect(tmp_path).query("suite == 'linear'").reset_index(drop=True)
    modes = [cfg["method.noise_mode"] for cfg in template["recipe"]]
    rng = np.random.default_rng(7)
    verdicts = {"unshifted": [], "shifted": []}
    for _ in range(DRAWS):
        truth = {m: v - FLOORS["linear"].sd * rng.standard_normal() for m, v in paper.items()}  # the paper's draw
        for name, delta in (("unshifted", 0.0), ("shifted", -SHIFT_PAPER)):
            frame = template.copy()
            frame["value"] = [truth[m] + delta + SIGMA * rng.standard_normal() for m in modes]
            res = check(frame, "paper", benchmarks=["table1"])
            verdicts[name] += list(res.cells.query("protocol == 'linear'")["verdict"])
    pass_rate = np.mean([v == PASS for v in verdicts["unshifted"]])
    detect = np.mean([v == REGRESSION for v in verdicts["shifted"]])
    print(f"\npaper check (floor sd {FLOORS['linear'].sd}), {DRAWS} draws x 4 cells, {SEEDS} seeds: "
          f"unshifted cells pass {pass_rate:.1%}; cells {SHIFT_PAPER} points lower flagged {detect:.1%}")
    assert pass_rate >= 0.95 and detect >= 0.80


# ---- the arithmetic, against naive references -----------------------------------------------------------
def test_pooled_sd_against_a_naive_pooling():
    groups = [[1.0, 2.0, 4.0], [10.0, 10.5], [3.0]]
    num = sum(sum((x - np.mean(g)) ** 2 for x in g) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    sd, got_df = pooled([float(np.std(g, ddof=1)) if len(g) > 1 else math.nan for g in groups],
                        [len(g) for g in groups])
    assert got_df == df == 3 and sd == pytest.approx(math.sqrt(num / df))
    assert pooled([math.nan], [1]) is None


def test_tolerance_is_a_two_sided_t_interval_of_a_difference_of_means():
    noise = Noise(0.5, 6, "test")
    assert tolerance(noise, 3, 2, 0.05) == pytest.approx(stats.t.ppf(0.975, 6) * 0.5 * math.sqrt(1 / 3 + 1 / 2))
    assert quantile(0.05, math.inf) == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize("better,tol,cap,identical,expected", [
    (0.5, 1.0, 2.0, False, PASS), (-1.5, 1.0, 2.0, False, REGRESSION), (1.5, 1.0, 2.0, False, "improvement"),
    (0.5, 3.0, 2.0, False, INCONCLUSIVE), (-4.0, 3.0, 2.0, False, REGRESSION), (0.0, 3.0, 2.0, True, PASS)])
def test_verdicts(better, tol, cap, identical, expected):
    assert verdict(better, tol, cap, identical) == expected
