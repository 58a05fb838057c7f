"""The reproduction check: every cell of a reference (the paper, or a baseline CSV) against the runs at hand.

The rule (docs/reports.md, "The statistical rule"):

1. The reference fixes the cells. Every one of them must be reproduced: a reference cell with no reproduced
   value is ``missing``, one whose runs have a NaN, unreadable or missing result is ``invalid``, one made from
   another checkpoint than the run's current one is ``stale``, one whose protocol fingerprint differs is
   ``incomparable`` (naming each differing key, its value and the reference's). None of these ever passes.
2. A compared cell's difference ``d = candidate mean - reference mean`` is judged against
   ``tolerance = q * s * sqrt(1/n_c + 1/n_r)`` (:mod:`canbench.reports.noise`), where ``s`` comes from the
   *reference's* seeds (pooled over the reference's cells of the same protocol and metric with two or more
   seeds) or, without any, from the documented noise floor of the metric; the candidate's own spread never
   enters, so one collapsed seed cannot widen its own tolerance. ``q`` is the two-sided Student-t (normal for
   a floor) quantile at ``alpha / m`` — Bonferroni over the ``m`` reference cells, so a check of many cells
   keeps a family-wise false-alarm rate of ``alpha``.
3. Verdicts: ``pass`` when ``|d| <= tolerance`` and the tolerance is no wider than the metric's meaningful
   difference (else ``inconclusive``: more seeds are needed); ``regression`` / ``improvement`` beyond it, in
   the metric's direction (losses are better lower). Identical means pass whatever the noise.

Exit codes: 0 when every reference cell passes, 1 otherwise, 2 for usage errors (a bad baseline file, an
unknown ``--benchmark``). Reproduced cells the reference does not hold are listed, never failed.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from canbench.fingerprint import code_version
from canbench.io import atomic_path
from canbench.methods import loss_term_names
from canbench.reports.cells import (
    CELL_KEYS,
    POSITION_KEYS,
    aggregate,
    best_group,
    describe_mismatches,
    lower_is_better,
    markers_by_position,
    to_cells,
)
from canbench.reports.noise import (
    IMPROVEMENT,
    INCONCLUSIVE,
    PASS,
    REGRESSION,
    Noise,
    floor_for,
    pooled,
    tolerance,
    verdict,
)
from canbench.reports.reference import BENCHMARK_TABLES, paper_reference

INCOMPARABLE, MISSING, INVALID, STALE, UNREFERENCED = "incomparable", "missing", "invalid", "stale", "no reference"
VERDICTS = (PASS, REGRESSION, IMPROVEMENT, INCONCLUSIVE, INCOMPARABLE, MISSING, INVALID, STALE)
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_ALPHA = 0.05
BASELINE_COLUMNS = CELL_KEYS + ["mean", "std", "n", "seeds", "fingerprint", "code_version"]
RESULT_COLUMNS = CELL_KEYS + ["expected", "expected_std", "expected_n", "got", "got_std", "got_n", "n_valid",
                              "diff", "tolerance", "cap", "noise", "verdict", "reason", "runs", "provenance"]
ACCURACY_METRICS = frozenset({"top1", "top5", "top1_best", "top5_best", "mean_shifted_top1"})


class BaselineError(ValueError):
    """A baseline CSV is missing, unreadable or breaks its schema; the message names the path, row and column."""


def known_metrics() -> frozenset[str]:
    """Metric names results carry: accuracies and every loss name (run summary and Table 4 spellings)."""
    names = loss_term_names()
    return ACCURACY_METRICS | {"loss", "final_loss"} | set(names) | set(names.values())


@dataclass
class CheckResult:
    """Per-cell verdicts, the reference label, and the numbers the summary line states."""

    cells: pd.DataFrame
    reference: str
    alpha: float = DEFAULT_ALPHA
    narrowed: str = ""

    def count(self, verdict_: str) -> int:
        """How many cells got ``verdict_``."""
        return int((self.cells["verdict"] == verdict_).sum()) if len(self.cells) else 0

    @property
    def reference_cells(self) -> int:
        return len(self.cells) - self.count(UNREFERENCED)

    @property
    def compared(self) -> int:
        """Reference cells with a comparable reproduced value (pass, regression, improvement, inconclusive)."""
        return sum(self.count(v) for v in (PASS, REGRESSION, IMPROVEMENT, INCONCLUSIVE))

    @property
    def exit_code(self) -> int:
        """0 when every reference cell passes (and there is at least one), else 1."""
        return EXIT_OK if self.reference_cells and self.count(PASS) == self.reference_cells else EXIT_FAIL

    @property
    def summary(self) -> str:
        """One line: how many cells were compared of how many, and every verdict's count."""
        counts = ", ".join(f"{self.count(v)} {v}" for v in VERDICTS if self.count(v) or v == PASS)
        extra = self.count(UNREFERENCED)
        return (f"check against {self.reference}{self.narrowed}: compared {self.compared} of "
                f"{self.reference_cells} reference cells — {counts}"
                + (f"; {extra} reproduced cells have no reference value (listed, not checked)" if extra else "")
                + f" -> {'PASS' if self.exit_code == EXIT_OK else 'FAIL'} (exit {self.exit_code})")

    @property
    def message(self) -> str:
        """The summary line, then every reference cell that did not pass with its reason."""
        bad = self.cells[~self.cells["verdict"].isin([PASS, UNREFERENCED])] if len(self.cells) else self.cells
        lines = [self.summary]
        for r in bad.to_dict("records")[:40]:
            lines.append(f"  {r['verdict'].upper()}: {cell_name(r)}: {textwrap.shorten(describe(r), 600)}")
            if r["provenance"]:  # what users ask first when numbers differ
                lines.append(f"      provenance: {textwrap.shorten(r['provenance'], 300)}")
        if len(bad) > 40:
            lines.append(f"  ... and {len(bad) - 40} more (--json lists every cell)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict for CI: summary, counts, exit code, alpha and every cell."""
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                   for r in self.cells.to_dict("records")]
        return {"reference": self.reference, "exit_code": self.exit_code, "summary": self.summary,
                "message": self.message, "alpha": self.alpha, "compared": self.compared,
                "reference_cells": self.reference_cells,
                "counts": {v: self.count(v) for v in (*VERDICTS, UNREFERENCED)}, "cells": records}


def cell_name(r: dict) -> str:
    parts = [r["table"], r["method"], r["arch"], r["pretrain_data"], f"{r['epochs']}ep" if r["epochs"] else "",
             r["protocol"], r["metric"], r["variant"], r["dataset"], f"{r['shots']}-shot" if r["shots"] else ""]
    return "/".join(p for p in parts if p)


def describe(r: dict) -> str:
    """The numbers behind a verdict, or its reason."""
    if r["verdict"] in (PASS, REGRESSION, IMPROVEMENT, INCONCLUSIVE):
        got = f"{r['got']:.4g}" + (f" ± {r['got_std']:.2g}" if r["got_n"] > 1 and not math.isnan(r["got_std"])
                                   else "")
        txt = (f"expected {r['expected']:.4g} (n={r['expected_n']:g}), got {got} (n={r['got_n']}), "
               f"diff {r['diff']:+.3g}, tolerance {r['tolerance']:.3g} [{r['noise']}]")
        return txt + (f"; {r['reason']}" if r["reason"] else "")
    return r["reason"]


def read_baseline(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a baseline CSV written by :func:`write_baseline`.

    Every row must have a finite mean, a whole ``n >= 1``, a finite non-negative ``std`` when ``n >= 2`` (none
    when ``n = 1``), a known metric, accuracies within [0, 100] with a spread of at most 100 points, a JSON
    fingerprint, and a cell of its own (no duplicates). The error names the file, the row and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline file {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BaselineError(f"baseline file {path} is not a readable CSV: {e}") from None
    missing = [c for c in BASELINE_COLUMNS if c not in df.columns]
    if missing:
        raise BaselineError(f"baseline file {path} lacks columns {missing} (expected {BASELINE_COLUMNS})")
    if not len(df):
        raise BaselineError(f"baseline file {path} has no cells")
    metrics = known_metrics()
    fps = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"baseline file {path}, row {i + 2}"
        mean, std, n = (_float(row[c]) for c in ("mean", "std", "n"))
        if not math.isfinite(mean):
            raise BaselineError(f"{where}: mean={row['mean']!r} is not a finite number")
        if not math.isfinite(n) or n < 1 or not float(n).is_integer():
            raise BaselineError(f"{where}: n={row['n']!r} is not a whole number >= 1")
        if n >= 2 and (not math.isfinite(std) or std < 0):
            raise BaselineError(f"{where}: std={row['std']!r} must be a finite, non-negative number with n={n:g}")
        if n == 1 and row["std"].strip() and not math.isnan(std):
            raise BaselineError(f"{where}: std={row['std']!r} with n=1 (one seed has no spread; leave it empty)")
        if row["metric"] not in metrics:
            raise BaselineError(f"{where}: metric={row['metric']!r} is not a known metric "
                                f"({', '.join(sorted(metrics))})")
        if row["metric"] in ACCURACY_METRICS and not (0 <= mean <= 100 and (math.isnan(std) or std <= 100)):
            raise BaselineError(f"{where}: accuracy {row['metric']} mean={mean:g} std={std:g} is outside "
                                "0-100 points (mean) or spreads more than 100 points (std)")
        try:
            fp = json.loads(row["fingerprint"]) if row["fingerprint"] else None
        except json.JSONDecodeError as e:
            raise BaselineError(f"{where}: fingerprint is not JSON ({e})") from None
        if not isinstance(fp, dict):
            raise BaselineError(f"{where}: fingerprint must be a JSON object (the protocol the cell was made with)")
        fps.append(fp)
    for col in ("mean", "std", "n"):
        df[col] = [_float(v) for v in df[col]]
    df["n"] = df["n"].astype(int)
    df["fingerprint"] = fps
    if df.duplicated(CELL_KEYS).any():
        dup = df[df.duplicated(CELL_KEYS, keep=False)][CELL_KEYS].drop_duplicates().to_dict("records")
        raise BaselineError(f"baseline file {path}: duplicated cells {dup[:3]}")
    return df


def _float(s: Any) -> float:
    try:
        return float(s) if str(s).strip() else math.nan
    except ValueError:
        return math.nan


def write_baseline(results: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Aggregate :func:`collect` output into a baseline CSV (atomic write); returns the written frame.

    Refuses results that could not be a reference: unusable values (NaN, unreadable, missing or stale results)
    or one cell reproduced under two protocols."""
    cells = to_cells(results)
    agg = aggregate(cells)
    if not len(agg):
        raise BaselineError(f"no results to write into baseline {path}")
    bad = [(cell_name(r), p) for r in agg.to_dict("records") for p in r["invalid"] + r["stale"]]
    bad += [("result file", m["error"]) for m in cells[cells["marker"].astype(bool)].to_dict("records")]
    if bad:
        raise BaselineError(f"cannot write baseline {path}: {len(bad)} results are unusable, e.g. "
                            f"{bad[0][0]}: {bad[0][1]}")
    dup = agg[agg.duplicated(CELL_KEYS, keep=False)]
    if len(dup):
        cells_ = dup[CELL_KEYS].drop_duplicates().to_dict("records")
        raise BaselineError(f"cannot write baseline {path}: {len(cells_)} cells have runs with different protocol "
                            f"fingerprints (e.g. {cells_[0]}); filter the results to one protocol first")
    df = agg[CELL_KEYS + ["mean", "std", "n"]].copy()
    df["seeds"] = [" ".join(s) for s in agg["seeds"]]
    df["fingerprint"] = [json.dumps(fp, sort_keys=True) for fp in agg["fp"]]
    df["code_version"] = [" ".join(cv) or code_version() for cv in agg["code_versions"]]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return df


def tables_of(benchmarks: list[str] | None) -> set[str] | None:
    """The cell tables ``--benchmark`` values select (``table2`` includes Fig. 1's finetune cells)."""
    if not benchmarks:
        return None
    return {t for b in benchmarks for t in BENCHMARK_TABLES.get(b, (b,))}


def _reference(reference: str | os.PathLike, benchmarks: list[str] | None) -> tuple[str, pd.DataFrame]:
    """(label, reference cells: CELL_KEYS, mean, std, n, expected_fp, compare_all) for the paper or a baseline."""
    if str(reference) == "paper":
        ref = paper_reference(benchmarks)
        ref["compare_all"] = False  # the paper's protocol names its keys; a run's other fields derive from them
        return "paper", ref
    ref = read_baseline(reference)
    tables = tables_of(benchmarks)
    if tables is not None:
        ref = ref[ref["table"].isin(tables)]
        if not len(ref):
            raise BaselineError(f"baseline file {reference} has no cells of --benchmark {', '.join(benchmarks)}")
    ref = ref.rename(columns={"fingerprint": "expected_fp"}).reset_index(drop=True)
    ref["compare_all"] = True
    return f"baseline {reference}", ref


def _noise(ref: pd.DataFrame, is_paper: bool) -> dict[tuple[str, str, str], Noise]:
    """Noise per (protocol, metric, dataset) of the reference cells: pooled reference seeds, else the floor."""
    out: dict[tuple[str, str, str], Noise] = {}
    for rec in ref.to_dict("records"):
        key = (rec["protocol"], rec["metric"], rec["dataset"])
        if key in out:
            continue
        family = ref[(ref["protocol"] == rec["protocol"]) & (ref["metric"] == rec["metric"])]
        pool = None if is_paper else pooled(list(family["std"]), list(family["n"]))
        if pool is not None:
            sd, df = pool
            n_cells = int((family["n"] >= 2).sum())
            out[key] = Noise(sd, df, f"pooled seed spread of {n_cells} reference {rec['protocol']}/{rec['metric']} "
                                     f"cells")
        else:
            f = floor_for(rec["protocol"], rec["metric"], rec["dataset"])
            out[key] = Noise(f.sd, math.inf, f.source)
    return out


def check(results: pd.DataFrame, reference: str | os.PathLike = "paper", benchmarks: list[str] | None = None,
          alpha: float = DEFAULT_ALPHA) -> CheckResult:
    """Judge every cell of ``reference`` on ``results`` (:func:`collect` output); see the module docstring."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")
    label, ref = _reference(reference, benchmarks)
    is_paper = label == "paper"
    tables = tables_of(benchmarks)
    cells = to_cells(results)
    if tables is not None and len(cells):
        cells = cells[cells["table"].isin(tables)]
    agg = aggregate(cells)
    by_key: dict[tuple, list[dict]] = {}
    for g in agg.to_dict("records"):
        by_key.setdefault(tuple(g[c] for c in CELL_KEYS), []).append(g)
    markers = markers_by_position(cells)
    noise = _noise(ref, is_paper)
    m = max(1, len(ref))
    rows, ref_keys = [], set()
    for rec in ref.to_dict("records"):
        key = {c: rec[c] for c in CELL_KEYS}
        ref_keys.add(tuple(key.values()))
        row = {**key, "expected": rec["mean"], "expected_std": rec["std"], "expected_n": rec["n"], "got": math.nan,
               "got_std": math.nan, "got_n": 0, "n_valid": 0, "diff": math.nan, "tolerance": math.nan,
               "cap": math.nan, "noise": "", "verdict": MISSING, "reason": "", "runs": "", "provenance": ""}
        rows.append(row)
        groups = by_key.get(tuple(key.values()), [])
        broken = markers.get(tuple(key[k] for k in POSITION_KEYS), [])
        if not groups:
            row["verdict"] = INVALID if broken else MISSING
            row["reason"] = ("; ".join(broken) if broken else
                             "no reproduced result for this reference cell" + _how_to_run(key, is_paper))
            continue
        expected = rec["expected_fp"]
        if expected is None:
            row.update(verdict=INCOMPARABLE, reason="the reference records no protocol for this cell")
            continue
        grp, diff = best_group(groups, expected, keys=None if rec["compare_all"] else list(expected))
        row.update(got=grp["mean"], got_std=grp["std"], got_n=grp["n"], n_valid=grp["n_valid"],
                   runs=" ".join(map(str, grp["runs"])), provenance=grp["provenance"])
        if diff:
            row.update(verdict=INCOMPARABLE, reason="protocol differs: " + describe_mismatches(
                diff, "paper" if is_paper else "baseline"))
        elif broken or grp["invalid"]:
            row.update(verdict=INVALID, reason="; ".join(broken + grp["invalid"]))
        elif grp["stale"]:
            row.update(verdict=STALE, reason="; ".join(grp["stale"]))
        else:
            _judge(row, grp, noise[(key["protocol"], key["metric"], key["dataset"])], alpha / m)
    # reproduced cells the reference does not hold: listed, never silently dropped, never failed
    for rec in (g for gs in by_key.values() for g in gs):
        key = tuple(rec[c] for c in CELL_KEYS)
        if key in ref_keys:
            continue
        ref_keys.add(key)
        rows.append({**{c: rec[c] for c in CELL_KEYS}, "expected": math.nan, "expected_std": math.nan,
                     "expected_n": 0, "got": rec["mean"], "got_std": rec["std"], "got_n": rec["n"],
                     "n_valid": rec["n_valid"], "diff": math.nan, "tolerance": math.nan, "cap": math.nan,
                     "noise": "", "verdict": UNREFERENCED,
                     "reason": f"the {'paper prints no number' if is_paper else 'baseline has no cell'} for this cell",
                     "runs": " ".join(map(str, rec["runs"])), "provenance": rec["provenance"]})
    narrowed = f" (narrowed to --benchmark {', '.join(benchmarks)})" if benchmarks else ""
    return CheckResult(cells=pd.DataFrame(rows, columns=RESULT_COLUMNS), reference=label, alpha=alpha,
                       narrowed=narrowed)


def _judge(row: dict[str, Any], grp: dict[str, Any], noise: Noise, alpha: float) -> None:
    """Fill a compared cell's difference, tolerance and verdict."""
    expected, got = float(row["expected"]), float(grp["mean"])
    floor = floor_for(row["protocol"], row["metric"], row["dataset"])
    scale = abs(expected) if floor.relative else 1.0
    sd = noise.sd * scale if math.isinf(noise.df) and floor.relative else noise.sd
    used = Noise(sd, noise.df, noise.source)
    tol = tolerance(used, int(grp["n_valid"]), int(row["expected_n"]), alpha)
    cap = floor.cap * scale
    d = got - expected
    better = -d if lower_is_better(row["metric"]) else d
    identical = math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    row.update(diff=d, tolerance=tol, cap=cap, noise=f"{used.describe()}; alpha {alpha:.2g} per cell",
               verdict=verdict(better, tol, cap, identical=identical))
    if row["verdict"] == INCONCLUSIVE:
        row["reason"] = (f"the tolerance {tol:.3g} is wider than the smallest difference worth reporting "
                         f"({cap:.3g}): run more seeds")
    elif identical:
        row["reason"] = "identical to the reference"


def _how_to_run(key: dict[str, str], is_paper: bool) -> str:
    if not is_paper:
        return ""
    from canbench.reports.reference import grid_of

    try:
        return f" (run `canbench grid submit {grid_of(key['table'])} --scale paper`)"
    except StopIteration:
        return ""


def _num(x: float, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def check_markdown(result: CheckResult) -> str:
    """Every reference cell (compared or not) as a Markdown table, after the summary line."""
    df = result.cells[result.cells["verdict"] != UNREFERENCED]
    lines = [f"### Reproduction check ({result.reference})", "", result.summary, ""]
    if len(df):
        lines += ["| Cell | Expected | Got | Δ | Tolerance | Verdict | Why |", "|---|---|---|---|---|---|---|"]
        for r in df.to_dict("records"):
            compared = r["verdict"] in (PASS, REGRESSION, IMPROVEMENT, INCONCLUSIVE)
            got = "—" if math.isnan(r["got"]) else f"{r['got']:.4g} (n={r['got_n']})"
            why = (r["noise"] + (f"; {r['reason']}" if r["reason"] else "")) if compared else r["reason"]
            lines.append(f"| {cell_name(r)} | {_num(r['expected'], '.4g')} | {got} | {_num(r['diff'], '+.3g')} | "
                         f"{_num(r['tolerance'], '.3g')} | {r['verdict']} | "
                         f"{textwrap.shorten(why, 300).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


__all__ = ["BASELINE_COLUMNS", "BaselineError", "CheckResult", "DEFAULT_ALPHA", "EXIT_FAIL", "EXIT_OK",
           "EXIT_USAGE", "IMPROVEMENT", "INCOMPARABLE", "INCONCLUSIVE", "INVALID", "MISSING", "PASS", "REGRESSION",
           "STALE", "UNREFERENCED", "VERDICTS", "cell_name", "check", "check_markdown", "known_metrics",
           "read_baseline", "tables_of", "write_baseline"]
