"""Regression check: every reproduced cell against the paper or a baseline CSV, with tolerances.

Verdicts per cell: ``pass`` | ``regression`` | ``improvement`` | ``incomparable`` (with the reason).
Tolerance: a default per metric (``top1``-like accuracies: 1.0 point absolute; losses: 2 % of the
expected value), or ``abs_tol`` if given, widened to ``k`` x the seed standard deviation when two
or more seeds are available (the larger of the current and the baseline std). The rule used is
recorded per cell. Exit codes: 0 all compared cells pass (or improve), 1 any regression, 2 nothing
comparable — never a silent pass.
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
from canbench.reports.cells import (
    CELL_KEYS,
    aggregate,
    best_group,
    describe_mismatches,
    lower_is_better,
    paper_protocol,
    to_cells,
)
from canbench.reports.paper import paper_numbers

PASS, REGRESSION, IMPROVEMENT, INCOMPARABLE = "pass", "regression", "improvement", "incomparable"
EXIT_OK, EXIT_REGRESSION, EXIT_NOTHING_COMPARABLE = 0, 1, 2
ABS_DEFAULT = 1.0  # accuracy points
REL_DEFAULT = 0.02  # fraction of the expected value, for losses and other non-accuracy metrics
BASELINE_COLUMNS = CELL_KEYS + ["mean", "std", "n", "seeds", "fingerprint", "code_version"]
RESULT_COLUMNS = CELL_KEYS + ["expected", "expected_std", "expected_n", "got", "got_std", "got_n", "diff",
                              "tolerance", "rule", "widened", "verdict", "reason"]


class BaselineError(ValueError):
    """A baseline CSV is missing, unreadable or breaks its schema; the message names the path."""


@dataclass
class CheckResult:
    """Per-cell verdicts plus the overall exit code and a one-paragraph message."""

    cells: pd.DataFrame
    reference: str

    def count(self, verdict: str) -> int:
        """How many cells got ``verdict``."""
        return int((self.cells["verdict"] == verdict).sum()) if len(self.cells) else 0

    @property
    def compared(self) -> int:
        """Cells with a comparable expected and reproduced value."""
        return self.count(PASS) + self.count(REGRESSION) + self.count(IMPROVEMENT)

    @property
    def exit_code(self) -> int:
        """0 all pass, 1 any regression, 2 nothing comparable."""
        if self.count(REGRESSION):
            return EXIT_REGRESSION
        return EXIT_OK if self.compared else EXIT_NOTHING_COMPARABLE

    @property
    def message(self) -> str:
        """A human summary naming the counts and, when nothing was comparable, why."""
        inc = self.cells[self.cells["verdict"] == INCOMPARABLE] if len(self.cells) else self.cells
        no_ref = int(inc["expected"].isna().sum()) if len(inc) else 0
        head = (f"check against {self.reference}: {self.compared} cells compared — {self.count(PASS)} pass, "
                f"{self.count(REGRESSION)} regression, {self.count(IMPROVEMENT)} improvement; "
                f"{len(inc)} incomparable ({len(inc) - no_ref} with a reference value, {no_ref} without)")
        if self.exit_code == EXIT_NOTHING_COMPARABLE:
            # reasons of cells that do have a reference value say most about why nothing compared
            ranked = pd.concat([inc[inc["expected"].notna()], inc[inc["expected"].isna()]]) if len(inc) else inc
            top = ranked["reason"].value_counts(sort=False).head(3) if len(ranked) else pd.Series(dtype=int)
            why = "\n  ".join(f"{n} x {textwrap.shorten(r, 400)}" for r, n in top.items())
            return head + (".\nNOTHING COMPARABLE (exit 2) — this is not a pass. "
                           + (f"Main reasons:\n  {why}" if why else "No reproduced results were found."))
        if self.exit_code == EXIT_REGRESSION:
            bad = self.cells[self.cells["verdict"] == REGRESSION]
            items = [f"{_cell_name(r)}: expected {r['expected']:.4g}, got {r['got']:.4g} (tol {r['tolerance']:.3g}, "
                     f"{r['rule']})" for r in bad.to_dict("records")]
            return head + ".\nREGRESSIONS:\n  " + "\n  ".join(items)
        return head + "."

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict for CI: counts, exit code, message and every cell."""
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                   for r in self.cells.to_dict("records")]
        return {"reference": self.reference, "exit_code": self.exit_code, "message": self.message,
                "counts": {v: self.count(v) for v in (PASS, REGRESSION, IMPROVEMENT, INCOMPARABLE)},
                "cells": records}


def _cell_name(r: dict) -> str:
    parts = [r["table"], r["method"], r["arch"], r["pretrain_data"], f"{r['epochs']}ep" if r["epochs"] else "",
             r["protocol"], r["metric"], r["variant"], r["dataset"], f"{r['shots']}-shot" if r["shots"] else ""]
    return "/".join(p for p in parts if p)


def tolerance(metric: str, expected: float, stds: list[float], k: float, abs_tol: float | None,
              n_seeds: tuple[int, int]) -> tuple[float, str, bool]:
    """(tolerance, rule text, widened?) for one cell; stds are the seed stds available (NaN = none)."""
    if abs_tol is not None:
        base, rule = abs_tol, f"abs {abs_tol:g} (--abs-tol)"
    elif lower_is_better(metric):
        base, rule = REL_DEFAULT * abs(expected), f"rel {REL_DEFAULT:.0%} of expected (loss default)"
    else:
        base, rule = ABS_DEFAULT, f"abs {ABS_DEFAULT:g} point (accuracy default)"
    sd = max((s for s in stds if s is not None and not math.isnan(s)), default=math.nan)
    if not math.isnan(sd) and k * sd > base:
        return k * sd, (f"{k:g} x seed std {sd:.3g} (seeds: {n_seeds[0]} current, {n_seeds[1]} reference) "
                        f"> {rule}"), True
    return base, rule, False


def _verdict(expected: float, got: float, tol: float, higher_is_better: bool) -> str:
    diff = got - expected
    if abs(diff) <= tol:
        return PASS
    better = diff > 0 if higher_is_better else diff < 0
    return IMPROVEMENT if better else REGRESSION


def read_baseline(path: str | os.PathLike) -> pd.DataFrame:
    """Read a baseline CSV written by :func:`write_baseline`; key fields as strings, numbers parsed."""
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
    for col in ("mean", "std", "n"):
        df[col] = pd.to_numeric(df[col].replace("", "nan"), errors="coerce")
    bad = df[df["mean"].isna()]
    if len(bad):
        raise BaselineError(f"baseline file {path}: row {int(bad.index[0]) + 2} has no numeric mean")
    try:
        df["fingerprint"] = [json.loads(s) if s else {} for s in df["fingerprint"]]
    except json.JSONDecodeError as e:
        raise BaselineError(f"baseline file {path}: a fingerprint cell is not JSON ({e})") from None
    if df.duplicated(CELL_KEYS).any():
        dup = df[df.duplicated(CELL_KEYS, keep=False)][CELL_KEYS].drop_duplicates().to_dict("records")
        raise BaselineError(f"baseline file {path}: duplicated cells {dup[:3]}")
    return df


def write_baseline(results: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Aggregate :func:`collect` output into a baseline CSV (atomic write); returns the written frame."""
    agg = aggregate(to_cells(results))
    if not len(agg):
        raise BaselineError(f"no results to write into baseline {path}")
    dup = agg[agg.duplicated(CELL_KEYS, keep=False)]
    if len(dup):
        cells = dup[CELL_KEYS].drop_duplicates().to_dict("records")
        raise BaselineError(f"cannot write baseline {path}: {len(cells)} cells have runs with different protocol "
                            f"fingerprints (e.g. {cells[0]}); filter the results to one protocol first")
    df = agg[CELL_KEYS + ["mean", "std", "n"]].copy()
    df["seeds"] = [" ".join(s) for s in agg["seeds"]]
    df["fingerprint"] = [json.dumps(fp, sort_keys=True) for fp in agg["fp"]]
    df["code_version"] = [" ".join(cv) or code_version() for cv in agg["code_versions"]]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return df


def _reference(reference: str | os.PathLike) -> tuple[str, pd.DataFrame]:
    """(label, reference frame with CELL_KEYS, mean, std, n, fingerprint or None) for paper or a baseline."""
    if str(reference) == "paper":
        p = paper_numbers()
        p = p[p["protocol"].isin(["linear", "finetune", "train_loss"])].copy()
        p["dataset"], p["shots"] = "", ""
        p["mean"], p["std"], p["n"] = p["value"], math.nan, 0
        p["fingerprint"] = None
        return "paper", p
    return f"baseline {reference}", read_baseline(reference)


def check(results: pd.DataFrame, reference: str | os.PathLike = "paper", k: float = 3.0,
          abs_tol: float | None = None) -> CheckResult:
    """Compare every reproduced cell of ``results`` (:func:`collect` output) with ``reference``."""
    if k < 0:
        raise ValueError(f"k={k} must be >= 0")
    label, ref = _reference(reference)
    agg = aggregate(to_cells(results))
    is_paper = label == "paper"
    rows = []
    ref_keys = set()
    for rec in ref.to_dict("records"):
        key = {c: rec[c] for c in CELL_KEYS}
        ref_keys.add(tuple(key.values()))
        sel = pd.Series(True, index=agg.index)
        for c in CELL_KEYS:
            sel &= agg[c] == key[c]
        groups = agg[sel]
        if is_paper and not len(groups):
            continue  # the paper prints many cells we never run; only reproduced ones are listed
        row = {**key, "expected": rec["mean"], "expected_std": rec["std"], "expected_n": rec["n"], "got": math.nan,
               "got_std": math.nan, "got_n": 0, "diff": math.nan, "tolerance": math.nan, "rule": "",
               "widened": False, "verdict": INCOMPARABLE, "reason": ""}
        if not len(groups):
            row["reason"] = "no reproduced result for this baseline cell"
            rows.append(row)
            continue
        expected_fp = paper_protocol(key) if is_paper else rec["fingerprint"]
        grp, diff = best_group(groups, expected_fp, keys=list(expected_fp) if is_paper else None)
        row.update(got=grp["mean"], got_std=grp["std"], got_n=grp["n"])
        if diff:
            row["reason"] = "protocol fingerprint differs: " + describe_mismatches(diff, "paper" if is_paper
                                                                                  else "baseline")
            rows.append(row)
            continue
        tol, rule, widened = tolerance(key["metric"], rec["mean"], [grp["std"], rec["std"]], k, abs_tol,
                                       (grp["n"], int(rec["n"]) if not math.isnan(rec["n"]) else 0))
        row.update(diff=grp["mean"] - rec["mean"], tolerance=tol, rule=rule, widened=widened,
                   verdict=_verdict(rec["mean"], grp["mean"], tol, bool(grp["higher_is_better"])))
        rows.append(row)
    # reproduced cells the reference does not know: listed, never silently dropped
    for rec in agg.to_dict("records"):
        key = tuple(rec[c] for c in CELL_KEYS)
        if key in ref_keys:
            continue
        ref_keys.add(key)
        rows.append({**{c: rec[c] for c in CELL_KEYS}, "expected": math.nan, "expected_std": math.nan,
                     "expected_n": 0, "got": rec["mean"], "got_std": rec["std"], "got_n": rec["n"],
                     "diff": math.nan, "tolerance": math.nan, "rule": "", "widened": False,
                     "verdict": INCOMPARABLE, "reason": f"no {'paper number' if is_paper else 'baseline cell'} "
                                                        "for this cell"})
    return CheckResult(cells=pd.DataFrame(rows, columns=RESULT_COLUMNS), reference=label)


def check_markdown(result: CheckResult, include: tuple[str, ...] = (REGRESSION, IMPROVEMENT, PASS)) -> str:
    """Compared cells (and a count of incomparable ones) as a Markdown table."""
    df = result.cells[result.cells["verdict"].isin(include)]
    lines = [f"### Regression check ({result.reference})", "", result.message.replace("\n", "  \n"), ""]
    if len(df):
        lines += ["| Cell | Expected | Got | Δ | Tolerance (rule) | Verdict |", "|---|---|---|---|---|---|"]
        for r in df.to_dict("records"):
            lines.append(f"| {_cell_name(r)} | {r['expected']:.4g} | {r['got']:.4g} | {r['diff']:+.3g} | "
                         f"{r['tolerance']:.3g} ({r['rule']}) | {r['verdict']} |")
    return "\n".join(lines) + "\n"
