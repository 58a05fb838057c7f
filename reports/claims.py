"""The paper's checkable claims, each judged on the runs at hand: holds / does not hold / not run.

A verdict is about the reproduction at the scale it was run (stated in ``scale``); the numbers
behind it (means ± std over seeds, n) are kept in ``numbers`` and spelled out in ``evidence``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from canbench.reports.cells import to_cells
from canbench.reports.paper import paper_value

HOLDS, FAILS, NOT_RUN = "holds", "does not hold", "not run at this scale"
FLOPS_RATIO_TOL = 0.15  # |SimCLR/CAN - 1.7| within this counts as "~1.7"


@dataclass
class Claim:
    """One claim of the paper and its verdict on the runs at hand."""

    id: str
    source: str
    statement: str
    verdict: str = NOT_RUN
    evidence: str = ""
    scale: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


Stat = tuple[float, float, int]  # mean, std (NaN for one seed), n


def _stats(values: pd.Series) -> Stat:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return (float(v.mean()) if len(v) else math.nan, float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def _fmt(s: Stat, digits: int = 2) -> str:
    mean, std, n = s
    if not n:
        return "—"
    txt = f"{mean:.{digits}f}"
    if n > 1:
        txt += f" ± {std:.{digits}f}"
    return f"{txt} (n={n})"


def _noise_note(a: Stat, b: Stat) -> str:
    """' (within seed noise)' when two means differ by less than their combined std."""
    sds = [s for s in (a[1], b[1]) if not math.isnan(s)]
    if sds and abs(a[0] - b[0]) < math.sqrt(sum(s * s for s in sds)):
        return " (difference within seed noise)"
    return ""


def _scale(df: pd.DataFrame) -> str:
    """'vit_micro on builtin, 1 ep (max 20 steps)' for the runs of ``df``."""
    if not len(df):
        return ""
    parts = []
    for (arch, data), g in df.groupby(["arch", "pretrain_data"], dropna=False):
        eps = sorted({f"{e:g}" for e in pd.to_numeric(g["epochs"], errors="coerce").dropna()})
        steps = sorted({int(s) for s in pd.to_numeric(g["max_steps"], errors="coerce").dropna()})
        txt = f"{arch} on {data}, {'/'.join(eps)} ep"
        parts.append(txt + (f" (max {'/'.join(map(str, steps))} steps)" if steps else ""))
    return "; ".join(parts)


def _by(cells: pd.DataFrame, table: str, protocol: str, metric: str, key: str) -> dict[str, Stat]:
    d = cells[(cells["table"] == table) & (cells["protocol"] == protocol) & (cells["metric"] == metric)]
    return {k: _stats(g["value"]) for k, g in d.groupby(key)}


def claim_table4(cells: pd.DataFrame, runs: pd.DataFrame) -> Claim:
    """Table 4: CAN ends with lower contrastive AND reconstruction loss than SimCLR and MAE at 50% masking."""
    c = Claim("table4_complementary", "Table 4 / Sec. 5",
              "At 50% masking CAN reaches a lower final contrastive loss than SimCLR and a lower final "
              "reconstruction loss than MAE")
    con = _by(cells, "table4", "train_loss", "contrastive_loss", "method")
    rec = _by(cells, "table4", "train_loss", "reconstruction_loss", "method")
    need = {"can": ("contrastive", con), "simclr": ("contrastive", con), "mae": ("reconstruction", rec)}
    missing = [f"{m} ({what} loss)" for m, (what, d) in need.items() if m not in d]
    if "can" not in rec:
        missing.append("can (reconstruction loss)")
    t4 = runs[runs["benchmark"] == "table4"]
    c.scale = _scale(t4)
    if missing:
        c.evidence = "missing table4 runs with summary.json losses: " + ", ".join(missing)
        return c
    ok_c, ok_r = con["can"][0] < con["simclr"][0], rec["can"][0] < rec["mae"][0]
    c.verdict = HOLDS if ok_c and ok_r else FAILS
    c.numbers = {"can_contrastive": con["can"], "simclr_contrastive": con["simclr"],
                 "can_reconstruction": rec["can"], "mae_reconstruction": rec["mae"]}
    c.evidence = (f"contrastive: CAN {_fmt(con['can'], 4)} vs SimCLR {_fmt(con['simclr'], 4)}"
                  f"{_noise_note(con['can'], con['simclr'])}; reconstruction: CAN {_fmt(rec['can'], 4)} vs MAE "
                  f"{_fmt(rec['mae'], 4)}{_noise_note(rec['can'], rec['mae'])} "
                  f"(paper: 9.143 vs 9.157; 0.1633 vs 0.1658)")
    ratios = sorted({f"{m}={r:g}" for m, r in zip(t4["method"], pd.to_numeric(t4["mask_ratio"], errors="coerce"))
                     if not math.isnan(r)})
    if any(not r.endswith("=0.5") for r in ratios):
        c.evidence += f"; WARNING mask ratios are not all 0.5: {', '.join(ratios)}"
    return c


def claim_table5(cells: pd.DataFrame, runs: pd.DataFrame) -> list[Claim]:
    """Table 5: removing any loss term hurts; removing C hurts most."""
    any_hurts = Claim("table5_each_term_helps", "Table 5", "Removing any of C, A, N lowers linear-probe accuracy")
    c_most = Claim("table5_removing_c_hurts_most", "Table 5 / Sec. 5",
                   "Removing the contrastive term (AN) hurts the most")
    d = _by(cells, "table5", "linear", "top1", "variant")
    scale = _scale(runs[runs["benchmark"] == "table5"])
    any_hurts.scale = c_most.scale = scale
    abl = [v for v in ("AN", "CN", "CA") if v in d]
    nums = " ".join(f"{v} {_fmt(d[v])};" for v in ("AN", "CN", "CA", "CAN") if v in d)
    paper = "(paper: AN 42.8, CN 68.5, CA 67.9, CAN 68.9)"
    if "CAN" in d and abl:
        any_hurts.verdict = HOLDS if all(d[v][0] < d["CAN"][0] for v in abl) else FAILS
        any_hurts.evidence = f"{nums} {paper}" + ("" if len(abl) == 3 else f"; only {', '.join(abl)} run")
        any_hurts.numbers = d
    else:
        any_hurts.evidence = "needs table5 runs of CAN and at least one ablation"
    if len(abl) == 3:
        c_most.verdict = HOLDS if d["AN"][0] < min(d["CN"][0], d["CA"][0]) else FAILS
        c_most.evidence = f"{nums} {paper}"
        c_most.numbers = d
    else:
        c_most.evidence = f"needs table5 runs AN, CN and CA (have: {', '.join(abl) or 'none'})"
    return [any_hurts, c_most]


def claim_table1(cells: pd.DataFrame, runs: pd.DataFrame) -> list[Claim]:
    """Table 1: noise with the sigma embedding helps (Full > None); without the embedding it helps less."""
    helps = Claim("table1_noise_helps", "Table 1 / Sec. 3.4",
                  "Denoising with the noise-level embedding helps: Full > None")
    emb = Claim("table1_sigma_embedding_needed", "Table 1 / Sec. 3.4",
                "The noise-level embedding matters: +noise, +loss (no embedding) < Full")
    d = _by(cells, "table1", "linear", "top1", "variant")
    helps.scale = emb.scale = _scale(runs[runs["benchmark"] == "table1"])
    nums = "; ".join(f"{v} {_fmt(d[v])}" for v in ("none", "augment_only", "loss_without_sigma_embedding", "full")
                     if v in d)
    for claim, a, b, paper in ((helps, "full", "none", "paper: 68.9 vs 67.9"),
                               (emb, "full", "loss_without_sigma_embedding", "paper: 68.9 vs 68.4")):
        if a in d and b in d:
            claim.verdict = HOLDS if d[a][0] > d[b][0] else FAILS
            claim.evidence = f"{nums}{_noise_note(d[a], d[b])} ({paper})"
            claim.numbers = {a: d[a], b: d[b]}
        else:
            claim.evidence = f"needs table1 runs with noise_mode {a} and {b}"
    return [helps, emb]


def _mask_curve(results: pd.DataFrame, method: str) -> pd.DataFrame:
    df = results[(results["benchmark"] == "fig6") & (results["suite"] == "linear") & (results["metric"] == "top1")
                 & (results["method"] == method)].copy()
    df["mask_ratio"] = pd.to_numeric(df["mask_ratio"], errors="coerce")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df.dropna(subset=["mask_ratio", "value"]).groupby("mask_ratio")["value"].agg(["mean", "std", "count"])


def claim_fig6(results: pd.DataFrame) -> list[Claim]:
    """Fig. 6: SimCLR degrades as masking grows; CAN peaks at a non-zero masking rate (below 75%)."""
    sim = Claim("fig6_simclr_degrades_with_masking", "Fig. 6 / Sec. 5",
                "SimCLR's linear-probe accuracy decreases as the masking rate increases")
    can = Claim("fig6_can_peaks_at_nonzero_mask", "Fig. 6 / Sec. 5",
                "CAN's accuracy peaks at a non-zero masking rate (below MAE's 75%)")
    scale = _scale(results[results["benchmark"] == "fig6"].drop_duplicates("run_dir"))
    sim.scale = can.scale = scale
    s = _mask_curve(results, "simclr")
    if len(s) >= 2:
        slope = float(np.polyfit(s.index.to_numpy(float), s["mean"].to_numpy(float), 1)[0])
        sim.verdict = HOLDS if slope < 0 and s["mean"].iloc[-1] < s["mean"].iloc[0] else FAILS
        sim.numbers = {"mask_ratio->top1": {f"{k:g}": float(v) for k, v in s["mean"].items()}, "slope": slope}
        sim.evidence = ("SimCLR top-1 by mask ratio: " + ", ".join(f"{k:g}: {v:.2f}" for k, v in s["mean"].items())
                        + f"; least-squares slope {slope:+.2f} points per unit mask ratio")
    else:
        sim.evidence = "needs fig6 SimCLR runs at two or more mask ratios"
    cm = _mask_curve(results, "can")
    if len(cm) >= 2 and 0.0 in cm.index:
        peak = float(cm["mean"].idxmax())
        can.verdict = HOLDS if 0.0 < peak < 0.75 else FAILS
        can.numbers = {"mask_ratio->top1": {f"{k:g}": float(v) for k, v in cm["mean"].items()}, "peak": peak}
        can.evidence = ("CAN top-1 by mask ratio: " + ", ".join(f"{k:g}: {v:.2f}" for k, v in cm["mean"].items())
                        + f"; peak at {peak:g}")
    else:
        can.evidence = "needs fig6 CAN runs at mask ratio 0 and at least one non-zero ratio"
    return [sim, can]


def claim_flops(pretrain: pd.DataFrame | None, flops_table: pd.DataFrame | None = None) -> Claim:
    """SimCLR needs ~1.7x CAN's training FLOPs per image at ViT-L ('70% more', '41% fewer')."""
    c = Claim("flops_ratio_vit_l", "Abstract, Sec. 1, Sec. 4.1",
              "SimCLR uses ~70% more FLOPs than CAN with ViT-L (ratio ~1.7)")
    target = paper_value("fig1", "simclr", "flops_ratio_vs_can", arch="vit_large")
    src, df = None, None
    if flops_table is not None and len(flops_table):
        missing = [k for k in ("method", "arch", "flops") if k not in flops_table.columns]
        if missing:
            raise ValueError(f"flops table needs columns method, arch, flops; missing {missing}")
        src = str(flops_table.attrs.get("source", "supplied FLOPs table"))
        df = flops_table[["method", "arch", "flops"]].copy()
    elif pretrain is not None and len(pretrain):
        df = pretrain.copy()
        train = pd.to_numeric(df["flops_train"], errors="coerce")
        df["flops"] = train.where(train > 0, pd.to_numeric(df["flops_forward"], errors="coerce"))
        src = "summary.json flops_per_image (train, else forward)"
    ratios: dict[str, float] = {}
    if df is not None:
        df["flops"] = pd.to_numeric(df["flops"], errors="coerce")
        mean = df.dropna(subset=["flops"]).groupby(["arch", "method"])["flops"].mean()
        for arch in sorted({a for a, _ in mean.index}):
            if (arch, "simclr") in mean.index and (arch, "can") in mean.index and mean[(arch, "can")] > 0:
                ratios[arch] = float(mean[(arch, "simclr")] / mean[(arch, "can")])
    c.numbers = {"ratios": ratios, "paper": target, "tolerance": FLOPS_RATIO_TOL}
    c.scale = f"source: {src}" if src else ""
    others = ", ".join(f"{a} {r:.2f}" for a, r in ratios.items() if a != "vit_large")
    if "vit_large" in ratios:
        r = ratios["vit_large"]
        c.verdict = HOLDS if abs(r - target) <= FLOPS_RATIO_TOL else FAILS
        c.evidence = f"SimCLR/CAN FLOPs per image at ViT-L: {r:.2f} (paper {target:g} ± {FLOPS_RATIO_TOL})"
        if others:
            c.evidence += f"; other sizes: {others}"
    else:
        c.evidence = "no ViT-L FLOPs for both SimCLR and CAN" + (f"; ratios at other sizes: {others}" if others else "")
    return c


def evaluate_claims(results: pd.DataFrame, pretrain: pd.DataFrame | None = None,
                    flops_table: pd.DataFrame | None = None) -> list[Claim]:
    """All claims, judged on :func:`collect` output (+ :func:`collect_pretrain` output for FLOPs)."""
    cells = to_cells(results)
    runs = results.drop_duplicates("run_dir") if len(results) else results
    return [claim_table4(cells, runs), *claim_table5(cells, runs), *claim_table1(cells, runs),
            *claim_fig6(results), claim_flops(pretrain, flops_table)]


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """Claims as a DataFrame (one row each; ``numbers`` kept as a dict)."""
    return pd.DataFrame([asdict(c) for c in claims],
                        columns=["id", "source", "statement", "verdict", "evidence", "scale", "numbers"])


def claims_markdown(claims: list[Claim]) -> str:
    """The scorecard as a Markdown table."""
    lines = ["### Claims scorecard", "", "| Claim | Source | Verdict | Numbers | Scale |", "|---|---|---|---|---|"]
    for c in claims:
        cells = [c.statement, c.source, c.verdict, c.evidence, c.scale]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"
