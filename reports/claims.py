"""The paper's checkable claims, each judged on the runs at hand: holds / does not hold / inconclusive / not run.

A claim compares *arms* (methods, ablation variants, points of a sweep). Its verdict is given per group of runs
that share one scale and one protocol fingerprint once the keys the arms differ in are set aside
(:attr:`ClaimSpec.arm_keys`): a ViT-B smoke run is never compared with a ViT-L one, nor a linear probe of one
recipe with another. Each group gets its own verdict, with n per arm and the noise it was judged against.

Noise is the check's model (:mod:`canbench.reports.noise`): the pooled seed spread of the group's own cells
with two or more seeds, else of every cell of the same scale, protocol and metric, else the metric's
documented floor. A difference ``d`` in the claimed direction *holds* when ``d > q * s * sqrt(1/n_a + 1/n_b)``
(``q``: two-sided quantile at 0.05, split over the claim's comparisons), *does not hold* when ``d`` is that far
the other way, and is *inconclusive* in between: one seed per arm and a 0.5-point difference never "holds".
A claim without runs names the grid that runs it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from canbench.reports.cells import fmt_key, lower_is_better, to_cells
from canbench.reports.claim_specs import FEWSHOT, SHIFT, ClaimSpec, all_claim_specs
from canbench.reports.collect import RANDOM_INIT
from canbench.reports.noise import FAILS, HOLDS, INCONCLUSIVE, Noise, claim_verdict, floor_for, pooled, quantile
from canbench.reports.paper import paper_value

NOT_RUN = "not run"
ALPHA = 0.05
FLOPS_RATIO_TOL = 0.15  # |SimCLR/CAN - 1.7| within this counts as "~1.7" (a count, not a noisy measurement)
VERDICT_ORDER = (HOLDS, FAILS, INCONCLUSIVE, NOT_RUN)


@dataclass
class Claim:
    """One claim's verdict on one group of runs (or ``not run`` with the grid that runs it)."""

    id: str
    source: str
    statement: str
    verdict: str = NOT_RUN
    evidence: str = ""
    scale: str = ""
    noise: str = ""
    paper: str = ""
    n: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    group: str = ""


# ---- grouping and noise ------------------------------------------------------------------------------------
def _get(row: dict, key: str) -> Any:
    return row[key] if key in row and key not in ("fp",) else row["fp"].get(key)


def _matches(row: dict, filt: dict[str, Any]) -> bool:
    for k, want in filt.items():
        got = _get(row, k)
        if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            if not math.isclose(float(got), want, abs_tol=1e-12):
                return False
        elif str(got) != str(want):
            return False
    return True


def _group_key(row: dict, arm_keys: tuple[str, ...]) -> tuple[str, str]:
    shared = {k: v for k, v in row["fp"].items() if not k.startswith(arm_keys)}
    return row["scale"], json.dumps(shared, sort_keys=True, default=str)


def _usable(row: dict) -> bool:
    v = row["value"]
    return row["error"] is None and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass
class Arm:
    values: list[float]
    problems: list[str]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(pd.Series(self.values).std(ddof=1)) if len(self.values) > 1 else math.nan

    def fmt(self, digits: int) -> str:
        if not self.values:
            return "—"
        s = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")
        return f"{s} (n={self.n})"


def _arm(rows: list[dict]) -> Arm:
    return Arm([float(r["value"]) for r in rows if _usable(r)],
               [f"{r['run_id']}: {r['error'] or 'value ' + str(r['value'])}" for r in rows if not _usable(r)])


def _noise(cells: pd.DataFrame, group_rows: list[dict], protocol: str, metric: str, scale: str,
           dataset: str = "") -> Noise:
    """The group's pooled seed spread, else the scale's (same protocol and metric), else the floor."""
    def pool(rows: list[dict]) -> tuple[float, int] | None:
        by: dict[tuple, list[float]] = {}
        for r in rows:
            if _usable(r):
                by.setdefault((r["table"], r["method"], r["arch"], r["epochs"], r["variant"], r["dataset"],
                               r["shots"], r["fp_sig"]), []).append(float(r["value"]))
        sds = [float(pd.Series(v).std(ddof=1)) for v in by.values() if len(v) >= 2]
        return pooled(sds, [len(v) for v in by.values() if len(v) >= 2])

    own = pool(group_rows)
    if own is not None:
        return Noise(own[0], own[1], "pooled seed spread of this group's cells")
    at = cells[cells["scale"] == scale]
    for sel, what in ((at[(at["protocol"] == protocol) & (at["metric"] == metric)], f"{protocol}/{metric}"),
                      (at[at["metric"] == metric] if not lower_is_better(metric) else at.iloc[:0],
                       f"{metric} (any protocol)")):
        found = pool(sel.to_dict("records"))
        if found is not None:
            return Noise(found[0], found[1], f"pooled seed spread of {scale or 'unscaled'}-scale {what} cells")
    f = floor_for(protocol, metric, dataset)
    return Noise(f.sd, math.inf, f"{'relative to the value; ' if f.relative else ''}{f.source}"
                 + ("; a paper-scale figure, likely smaller than this scale's noise: run >= 2 seeds"
                    if scale and scale != "paper" else ""))


def _sd(noise: Noise, protocol: str, metric: str, level: float) -> float:
    f = floor_for(protocol, metric)
    return noise.sd * abs(level) if f.relative and math.isinf(noise.df) else noise.sd


def _tol(noise: Noise, sd: float, n_a: int, n_b: int, alpha: float) -> float:
    return quantile(alpha, noise.df) * sd * math.sqrt(1 / n_a + 1 / n_b)


def _scale_text(rows: list[dict]) -> str:
    r = rows[0]
    fp = r["fp"]
    arch = fp.get("pretrain.model.arch")
    data = fp.get("pretrain.data.identity.name") or fp.get("pretrain.data.identity")
    eps = fp.get("pretrain.optim.epochs")
    steps = fp.get("pretrain.optim.max_steps")
    txt = f"{r['scale'] or 'unscaled'} scale: {arch} on {data}"
    if eps is not None:
        txt += f", {fmt_key(eps)} ep"
    if steps:
        txt += f" (max {steps} steps)"
    return txt


def _gid(key: tuple[str, str]) -> str:
    return hashlib.sha256(key[1].encode()).hexdigest()[:8]


# ---- the kinds of claim ------------------------------------------------------------------------------------
def _judge_pairs(spec: ClaimSpec, arms: dict[str, Arm], noise: Noise, alpha: float,
                 pairs: tuple[tuple[str, str], ...]) -> tuple[str, str, dict[str, Any]]:
    lower = lower_is_better(spec.metric)
    digits = 4 if lower else 2
    parts, verdicts, nums = [], [], {}
    for a, b in pairs:
        A, B = arms[a], arms[b]
        diff = (B.mean - A.mean) if lower else (A.mean - B.mean)
        sd = _sd(noise, spec.protocol, spec.metric, (A.mean + B.mean) / 2)
        tol = _tol(noise, sd, A.n, B.n, alpha / len(pairs))
        v = claim_verdict(diff, tol)
        verdicts.append(v)
        parts.append(f"{a} {A.fmt(digits)} vs {b} {B.fmt(digits)}: {'−' if lower else '+'}"
                     f"{abs(diff):.{digits}g} in the claimed direction{'' if diff >= 0 else ' (reversed)'}, "
                     f"tolerance {tol:.3g} -> {v}")
        nums[f"{a}>{b}"] = {"diff": diff, "tolerance": tol, "verdict": v}
    verdict = FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
    return verdict, "; ".join(parts), nums


def _judge_slope(spec: ClaimSpec, rows: list[dict], noise: Noise, alpha: float) -> tuple[str, str, dict]:
    pts = [(float(_get(r, spec.axis)), float(r["value"])) for r in rows if _usable(r)]
    xs = sorted({x for x, _ in pts})
    if len(xs) < 2:
        return NOT_RUN, f"needs two or more values of {spec.axis}", {}
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    tol = quantile(alpha, noise.df) * _sd(noise, spec.protocol, spec.metric, my) / math.sqrt(sxx)
    v = claim_verdict(-slope, tol)
    means = {x: sum(y for xx, y in pts if xx == x) / sum(1 for xx, _ in pts if xx == x) for x in xs}
    ns = {x: sum(1 for xx, _ in pts if xx == x) for x in xs}
    txt = (", ".join(f"{x:g}: {means[x]:.2f} (n={ns[x]})" for x in xs)
           + f"; least-squares slope {slope:+.2f} points per unit, tolerance {tol:.3g} -> {v}")
    return v, txt, {"slope": slope, "tolerance": tol, "curve": {f"{x:g}": means[x] for x in xs}}


def _evaluate(spec: ClaimSpec, cells: pd.DataFrame) -> list[Claim]:
    d = cells[(cells["protocol"] == spec.protocol) & (cells["metric"] == spec.metric)
              & ~cells["marker"].astype(bool)]
    if spec.tables:
        d = d[d["table"].isin(spec.tables)]
    rows = [r for r in d.to_dict("records") if _matches(r, spec.where)]
    if spec.kind == "best":
        values = sorted({float(_get(r, spec.axis)) for r in rows if _get(r, spec.axis) is not None})
        arms_def = {f"{spec.axis.rsplit('.', 1)[-1]}={v:g}": {spec.axis: v} for v in values}
        best, pairs = f"{spec.axis.rsplit('.', 1)[-1]}={spec.best:g}", ()
    else:
        arms_def, pairs, best = spec.arms, spec.pairs, ""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if spec.kind == "slope" or any(_matches(r, f) for f in arms_def.values()):
            groups.setdefault(_group_key(r, spec.arm_keys), []).append(r)
    out, partial = [], []
    for key, grows in sorted(groups.items()):
        base = Claim(spec.id, spec.source, spec.statement, scale=_scale_text(grows), paper=spec.paper,
                     group=_gid(key))
        noise = _noise(cells, grows, spec.protocol, spec.metric, key[0])
        base.noise = noise.describe()
        if spec.kind == "slope":
            arm = _arm(grows)
            base.n = {"runs": arm.n}
            if arm.problems:
                base.verdict, base.evidence = INCONCLUSIVE, "unusable results: " + "; ".join(arm.problems)
            else:
                base.verdict, base.evidence, base.numbers = _judge_slope(spec, grows, noise, ALPHA)
            if base.verdict == NOT_RUN:
                partial.append(f"{base.scale}: {base.evidence}")
                continue
            out.append(base)
            continue
        arms = {a: _arm([r for r in grows if _matches(r, f)]) for a, f in arms_def.items()}
        gpairs = pairs
        if spec.kind == "best":  # the claimed best against every other point this group ran
            gpairs = tuple((best, a) for a in arms if a != best and (arms[a].n or arms[a].problems))
            needed = {best, *(a for p in gpairs for a in p)}
        else:
            needed = {a for p in gpairs for a in p}
        missing = sorted(a for a in needed if a not in arms or (not arms[a].n and not arms[a].problems))
        base.n = {a: arms[a].n for a in arms if a in needed}
        if missing:
            partial.append(f"{base.scale}: has {', '.join(a for a in arms if arms[a].n) or 'none'}, "
                           f"needs {', '.join(missing)}")
            continue
        bad = [p for a in needed for p in arms[a].problems]
        if bad:
            base.verdict, base.evidence = INCONCLUSIVE, "unusable results: " + "; ".join(bad)
        elif not gpairs:
            partial.append(f"{base.scale}: only one value of {spec.axis}")
            continue
        else:
            base.verdict, base.evidence, base.numbers = _judge_pairs(spec, arms, noise, ALPHA, gpairs)
        out.append(base)
    if not out:
        why = ("; ".join(partial) + "; ") if partial else "no runs; "
        out.append(Claim(spec.id, spec.source, spec.statement, NOT_RUN, paper=spec.paper,
                         evidence=f"{why}run `canbench grid submit {spec.grid}` (any scale)"))
    return out


def _evaluate_count(spec: ClaimSpec, cells: pd.DataFrame) -> list[Claim]:
    """CAN vs the best other method on each data set (each shot count for few-shot)."""
    d = cells[(cells["protocol"] == spec.protocol) & (cells["metric"] == spec.metric)
              & ~cells["marker"].astype(bool) & (cells["dataset"] != "")]
    groups: dict[tuple, list[dict]] = {}
    for r in d.to_dict("records"):
        key = _group_key(r, spec.arm_keys)
        groups.setdefault((r["table"], r["arch"], r["epochs"], *key), []).append(r)
    out = []
    for gkey, grows in sorted(groups.items()):
        skey = (gkey[3], gkey[4])
        noise = _noise(cells, grows, spec.protocol, spec.metric, skey[0])
        for shots in sorted({r["shots"] for r in grows}, key=lambda s: float(s or 0)):
            srows = [r for r in grows if r["shots"] == shots]
            sets = sorted({r["dataset"] for r in srows})
            ahead, behind, tie, parts, bad = [], [], [], [], []
            ns = {m: len({r["run_id"] for r in srows if r["method"] == m and _usable(r)})
                  for m in sorted({r["method"] for r in srows})}
            for ds in sets:
                by = {m: _arm([r for r in srows if r["dataset"] == ds and r["method"] == m])
                      for m in sorted({r["method"] for r in srows if r["dataset"] == ds})}
                bad += [p for a in by.values() for p in a.problems]
                others = {m: a for m, a in by.items() if m != "can" and a.n}
                if "can" not in by or not by["can"].n or not others:
                    continue
                rival = max(others, key=lambda m: others[m].mean)
                can, riv = by["can"], others[rival]
                diff = can.mean - riv.mean
                tol = _tol(noise, noise.sd, can.n, riv.n, ALPHA)
                v = claim_verdict(diff, tol)
                (ahead if v == HOLDS else behind if v == FAILS else tie).append(ds)
                parts.append(f"{ds}: CAN {can.fmt(1)} vs {rival} {riv.fmt(1)} (tol {tol:.2g})")
            n = len(ahead) + len(behind) + len(tie)
            if not n:
                continue
            what = f" at {shots} shots" if shots else ""
            c = Claim(f"{spec.id}{'_' + shots + 'shot' if shots else ''}", spec.source,
                      f"{spec.statement}{what}", scale=_scale_text(srows), noise=noise.describe(), paper=spec.paper,
                      n=ns, group=_gid(skey))
            if bad:
                c.verdict = INCONCLUSIVE
                c.evidence = "unusable results: " + "; ".join(bad)
            else:
                c.verdict = HOLDS if len(ahead) > n / 2 else FAILS if len(ahead) + len(tie) <= n / 2 else INCONCLUSIVE
                c.evidence = (f"CAN ahead beyond the noise on {len(ahead)} of {n} sets, behind on {len(behind)}, "
                              f"within the noise on {len(tie)}: " + "; ".join(parts))
            c.numbers = {"ahead": ahead, "behind": behind, "within_noise": tie, "sets": n}
            out.append(c)
    if not out:
        out.append(Claim(spec.id, spec.source, spec.statement, NOT_RUN, paper=spec.paper,
                         evidence=f"needs {spec.protocol} results of CAN and another method; run "
                                  f"`canbench grid submit {spec.grid}`"))
    return out


def claim_flops(pretrain: pd.DataFrame | None, flops_table: pd.DataFrame | None = None) -> Claim:
    """SimCLR needs ~1.7x CAN's training FLOPs per image at ViT-L ('70% more', '41% fewer').

    Judged on the runs' own recorded FLOPs (summary.json, counted on the real model during training) when ViT-L
    runs of both methods exist, else on ``flops_table`` (counted on the meta device); ratios at every other
    architecture the runs used are reported beside it. A FLOPs count is exact, so the tolerance is fixed."""
    c = Claim("flops_ratio_vit_l", "Abstract, Sec. 1, Sec. 4.1",
              "SimCLR uses ~70% more FLOPs than CAN with ViT-L (ratio ~1.7)")
    target = paper_value("fig1", "simclr", "flops_ratio_vs_can", arch="vit_large")
    c.paper = f"{target:g}"
    runs = _ratios(_flops_of_runs(pretrain)) if pretrain is not None and len(pretrain) else {}
    table: dict[str, float] = {}
    if flops_table is not None and len(flops_table):
        missing = [k for k in ("method", "arch", "flops") if k not in flops_table.columns]
        if missing:
            raise ValueError(f"flops table needs columns method, arch, flops; missing {missing}")
        table = _ratios(flops_table[["method", "arch", "flops"]].copy())
    src = str(flops_table.attrs.get("source", "supplied FLOPs table")) if flops_table is not None else ""
    c.numbers = {"ratios": runs, "table_ratios": table, "paper": target, "tolerance": FLOPS_RATIO_TOL}
    c.n = {"runs_archs": len(runs)}
    if "vit_large" in runs:
        r, how = runs["vit_large"], "the runs' recorded training FLOPs per image"
    elif "vit_large" in table:
        r, how = table["vit_large"], f"{src} (no ViT-L runs of both methods)"
    else:
        r, how = None, ""
    others = ", ".join(f"{a} {x:.2f}" for a, x in runs.items() if a != "vit_large")
    c.scale = ("runs' summary.json flops_per_image" if runs else "") + (f"; {src}" if table else "")
    if r is not None:
        c.verdict = HOLDS if abs(r - target) <= FLOPS_RATIO_TOL else FAILS
        c.evidence = f"SimCLR/CAN at ViT-L: {r:.2f} from {how} (paper {target:g} ± {FLOPS_RATIO_TOL})"
    else:
        c.evidence = "no ViT-L FLOPs of both SimCLR and CAN; run `canbench grid submit table2_jft`"
    if others:
        c.evidence += f"; measured by the runs at other sizes (not the paper's setting): {others}"
    return c


def _flops_of_runs(pretrain: pd.DataFrame) -> pd.DataFrame:
    df = pretrain.copy()
    train = pd.to_numeric(df["flops_train"], errors="coerce")
    df["flops"] = train.where(train > 0, pd.to_numeric(df["flops_forward"], errors="coerce"))
    return df[["method", "arch", "flops"]]


def _ratios(df: pd.DataFrame) -> dict[str, float]:
    df["flops"] = pd.to_numeric(df["flops"], errors="coerce")
    mean = df.dropna(subset=["flops"]).groupby(["arch", "method"])["flops"].mean()
    out = {}
    for arch in sorted({a for a, _ in mean.index}):
        if (arch, "simclr") in mean.index and (arch, "can") in mean.index and mean[(arch, "can")] > 0:
            out[arch] = float(mean[(arch, "simclr")] / mean[(arch, "can")])
    return out


def evaluate_claims(results: pd.DataFrame, pretrain: pd.DataFrame | None = None,
                    flops_table: pd.DataFrame | None = None) -> list[Claim]:
    """Every claim, judged per (scale, fingerprint) group on :func:`collect` output (+ :func:`collect_pretrain`
    output for the FLOPs claim). Random-init encoders are a reference, never an arm of a claim."""
    if len(results) and "method" in results:
        results = results[results["method"] != RANDOM_INIT]
    cells = to_cells(results)
    out: list[Claim] = []
    for spec in all_claim_specs():
        out += _evaluate(spec, cells)
    out += _evaluate_count(FEWSHOT, cells)
    out += _evaluate_count(SHIFT, cells)
    out.append(claim_flops(pretrain, flops_table))
    return out


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """Claims as a DataFrame (one row per claim and group)."""
    cols = ["id", "source", "statement", "verdict", "evidence", "scale", "noise", "paper", "n", "numbers", "group"]
    return pd.DataFrame([asdict(c) for c in claims], columns=cols)


def n_text(c: Claim) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.n.items()) if c.n else ""


def claims_markdown(claims: list[Claim]) -> str:
    """The scorecard as a Markdown table."""
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICT_ORDER}
    lines = ["### Claims scorecard", "", ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
             "| Claim | Source | Verdict | n per arm | Numbers | Noise | Paper | Scale |",
             "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        row = [c.statement, c.source, c.verdict, n_text(c), c.evidence, c.noise, c.paper, c.scale]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["ALPHA", "Claim", "FAILS", "HOLDS", "INCONCLUSIVE", "NOT_RUN", "VERDICT_ORDER", "claim_flops",
           "claims_frame", "claims_markdown", "evaluate_claims", "n_text"]
