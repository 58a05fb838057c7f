"""The PDF report a researcher reads (A4, written atomically).

Pages, in order:

1. **Summary**: what ran and at what scale; the verdict counts (the check given with ``--against``, and the
   comparison with the paper); the claims at a glance; the largest regressions; the random-init and chance
   references; the hardware.
2. **The paper's tables** that have runs, typeset as tables in the paper's shape — row | paper | reproduced
   (mean ± std, n) | difference | verdict — with the footnotes that say why a cell is not compared; then one
   **not run** list of the tables without runs (and the grid that runs each).
3. **Other benchmarks** (``smoke``, ...): the methods side by side, with a random-init encoder (when the results
   hold one) and chance as reference columns.
4. **Figures**, each drawn once: training losses, few-shot and robustness bars, Fig. 6 / Fig. 7 where run, and
   accuracy against compute over every run (a training shared by two grids counted once); accuracy figures
   carry the random-init and chance lines.
5. **Pretraining efficiency** (device and device-hours: GPU-hours only on GPUs), the **claims scorecard**, the
   **check** (every reference cell), the **cells not compared with the paper**, and **provenance**: run ids,
   config fingerprints, the command line of each grid, code versions and hardware.

Text and tables flow down A4 pages (:class:`canbench.reports.layout.Flow`): a section starts where the previous
one ended, a table that does not fit moves to the next page with its header, and a page never ends with a lone
row.

Why one module: every section draws from the same collected frames, checks and claims, and the summary quotes
what the later pages show; split apart, each piece would only pass those along.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from canbench.fingerprint import code_version  # noqa: E402
from canbench.io import atomic_path  # noqa: E402
from canbench.reports import figures  # noqa: E402
from canbench.reports.cells import CELL_KEYS, PAPER_TABLES, aggregate, to_cells  # noqa: E402
from canbench.reports.check import (  # noqa: E402
    IMPROVEMENT,
    INCOMPARABLE,
    INCONCLUSIVE,
    INVALID,
    MISSING,
    PASS,
    REGRESSION,
    STALE,
    UNREFERENCED,
    CheckResult,
    cell_name,
    check,
)
from canbench.reports.claims import NOT_RUN, VERDICT_ORDER, Claim, evaluate_claims, n_text  # noqa: E402
from canbench.reports.collect import RANDOM_INIT, collect, collect_pretrain, loss_curves  # noqa: E402
from canbench.reports.layout import Flow  # noqa: E402
from canbench.reports.noise import Noise, floor_for, pooled, tolerance  # noqa: E402
from canbench.reports.reference import grid_of  # noqa: E402
from canbench.reports.tables import (  # noqa: E402
    ARCH_LABELS,
    TITLES,
    TableView,
    build_table,
    method_label,
    results_matrix,
)

log = logging.getLogger(__name__)

SECTION_ORDER = ("table1", "table2", "table3", "table4", "table5", "fig6", "fig7")
COMMANDS_FILE = "commands.jsonl"  # written by canbench.slurm.control.record_command in each grid root
VERDICT_COLORS = {PASS: "#1a7f37", REGRESSION: "#c62828", IMPROVEMENT: "#1565c0", INCONCLUSIVE: "#b26a00",
                  INCOMPARABLE: "0.4", MISSING: "0.55", INVALID: "#c62828", STALE: "#b26a00",
                  "holds": "#1a7f37", "does not hold": "#c62828", NOT_RUN: "0.55", "not run": "0.55"}
SEVERITY = (REGRESSION, INVALID, STALE, MISSING, INCOMPARABLE, IMPROVEMENT, INCONCLUSIVE, PASS, UNREFERENCED)


def _verdict_color(text: str) -> str:
    return VERDICT_COLORS.get(str(text).split(" [")[0].strip(), "black")


# ---------------------------------------------------------------- what ran
def _runs(results: pd.DataFrame, pretrain: pd.DataFrame) -> pd.DataFrame:
    """One row per run folder: run columns, plus steps, hours and the fingerprint where a summary exists."""
    parts = [df.drop_duplicates("run_dir") for df in (pretrain, results) if len(df)]
    if not parts:
        return pd.DataFrame(columns=["run_dir", "benchmark", "method", "state"])
    runs = pd.concat(parts, ignore_index=True).drop_duplicates("run_dir")
    runs["benchmark"] = runs["benchmark"].fillna("unassigned")
    return runs.reset_index(drop=True)


def config_fingerprint(recipe: Any) -> str:
    """A short digest of a run's training recipe (every result-affecting key; the seed excluded)."""
    if not isinstance(recipe, dict):
        return "—"
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _steps_text(d: pd.DataFrame) -> str:
    steps = sorted({int(s) for s in pd.to_numeric(d.get("steps", pd.Series(dtype=float)), errors="coerce").dropna()})
    eps = sorted({f"{float(e):g}" for e in pd.to_numeric(d["epochs"], errors="coerce").dropna()})
    parts = []
    if steps:
        parts.append(f"{', '.join(map(str, steps))} steps")
    if eps:
        parts.append(f"{', '.join(eps)} ep")
    return " = ".join(parts) if parts else "—"


def _what_ran(runs: pd.DataFrame) -> list[list[str]]:
    rows = []
    for (bench, scale), d in runs.groupby(["benchmark", runs["scale"].fillna("—")], sort=False):
        trained = d[d["method"] != RANDOM_INIT]
        archs = ", ".join(sorted({ARCH_LABELS.get(a, str(a)) for a in trained["arch"].dropna()})) or "—"
        data = ", ".join(sorted({str(x) for x in trained["pretrain_data"].dropna()})) or "—"
        px = ", ".join(sorted({f"{int(x)}" for x in pd.to_numeric(trained["img_size"], errors="coerce").dropna()}))
        methods = ", ".join(method_label(m) for m in figures._methods(d))
        states = ", ".join(f"{n} {s}" for s, n in trained["state"].value_counts().items())
        n_rand = int((d["method"] == RANDOM_INIT).sum())
        rows.append([str(bench), str(scale), f"{archs} ({px} px) on {data}", _steps_text(trained), methods,
                     f"{len(trained)} ({states})" + (f" + {n_rand} random init" if n_rand else "")])
    return rows


def _hardware(results: pd.DataFrame, pretrain: pd.DataFrame) -> list[str]:
    seen: dict[str, int] = {}
    for fps in (pretrain.get("fingerprint", []), results.get("fingerprint", [])):
        for fp in fps:
            if isinstance(fp, dict) and fp.get("device_type"):
                k = (f"{figures.device_of(fp)} (torch {fp.get('torch', '?')}, timm {fp.get('timm', '?')})")
                seen[k] = seen.get(k, 0) + 1
    return sorted(seen) or ["not recorded in the results"]


# ---------------------------------------------------------------- verdicts
def _paper_check(results: pd.DataFrame, benchmark: str | None) -> CheckResult | None:
    """The comparison with the paper that gives the paper tables their verdict column."""
    if benchmark is not None and benchmark not in PAPER_TABLES:
        return None
    try:
        return check(results, "paper", benchmarks=[benchmark] if benchmark else None)
    except ValueError as e:  # no reference cells for this narrowing: the tables show status only
        log.warning("no paper verdicts: %s", e)
        return None


def _verdicts(result: CheckResult | None) -> dict[tuple, str]:
    if result is None or not len(result.cells):
        return {}
    return {tuple(str(r[k]) for k in CELL_KEYS): r["verdict"] for r in result.cells.to_dict("records")}


def _counts(result: CheckResult) -> str:
    counts = result.cells["verdict"].value_counts()
    return ", ".join(f"{int(counts[v])} {v}" for v in SEVERITY if v in counts and v != UNREFERENCED)


def _largest(results: list[CheckResult], k: int = 6) -> tuple[list[list[str]], bool]:
    """The compared cells furthest from their reference, regressions first: (rows, any regression)."""
    frames = []
    for r in results:
        df = r.cells[r.cells["verdict"].isin([REGRESSION, IMPROVEMENT, INCONCLUSIVE, PASS])].copy()
        df["ref"] = r.reference
        frames.append(df)
    if not frames or not sum(len(f) for f in frames):
        return [], False
    df = pd.concat(frames, ignore_index=True)
    df = df[df["diff"].abs() > 0]  # cells equal to their reference are not "furthest" from anything
    if not len(df):
        return [], False
    df["z"] = (df["diff"].abs() / df["tolerance"].where(df["tolerance"] > 0)).fillna(0.0)
    df["reg"] = df["verdict"] == REGRESSION
    df = df.sort_values(["reg", "z"], ascending=False).head(k)
    rows = [[cell_name(r), Path(r["ref"].replace("baseline ", "")).name, f"{r['expected']:.4g}",
             f"{r['got']:.4g} (n={r['got_n']})", f"{r['diff']:+.3g}", f"{r['tolerance']:.3g}", r["verdict"]]
            for r in df.to_dict("records")]
    return rows, bool(df["reg"].any())


# ---------------------------------------------------------------- sections
def _summary(flow: Flow, title: str, root: Path, benchmark: str | None, runs: pd.DataFrame, results: pd.DataFrame,
             pretrain: pd.DataFrame, claims: list[Claim], checks: list[CheckResult],
             paper_check: CheckResult | None) -> None:
    flow.title(title)
    flow.para(f"Summary · CAN / SimCLR / MAE reproduction · results {root}"
              + (f" (benchmark {benchmark})" if benchmark else "") + f" · code {code_version()} · "
              f"{_dt.datetime.now().isoformat(timespec='minutes')}", size=8, color="0.3")
    flow.heading("What ran", 11)
    if len(runs):
        flow.table(["Benchmark", "Scale", "Model and data", "Steps per run", "Methods", "Runs"], _what_ran(runs),
                   size=7)
    else:
        flow.para(f"No runs under {root}" + (f" for benchmark {benchmark}" if benchmark else "") + ".")
    hours = pd.to_numeric(pretrain.get("device_hours", pd.Series(dtype=float)), errors="coerce").sum()
    flow.para("Hardware: " + "; ".join(_hardware(results, pretrain))
              + (f". Training time: {hours:.2f} {figures.hours_label(pretrain)} in all." if hours else "."), size=7.5)

    flow.heading("Verdicts", 11)
    for c in checks:
        flow.para(f"{c.reference}: compared {c.compared} of {c.reference_cells} cells — {_counts(c)}.",
                  prefix=("PASS" if c.exit_code == 0 else "FAIL", VERDICT_COLORS[PASS if c.exit_code == 0
                                                                               else REGRESSION]))
    if paper_check is not None:
        pc = paper_check
        n_rep = pc.reference_cells - pc.count(MISSING)
        flow.para(f"Against the paper: {n_rep} of its {pc.reference_cells} cells (Tables 1-5, Fig. 1) reproduced — "
                  f"{pc.compared} compared ({pc.count(PASS)} pass, {pc.count(REGRESSION)} regression), "
                  f"{pc.count(INCOMPARABLE)} not comparable (another protocol, e.g. a smaller scale; the tables' "
                  f"footnotes say which keys), {pc.count(MISSING)} not run.")
    if not checks and paper_check is None:
        flow.para("No reference check in this report (canbench report --against paper|BASELINE.csv adds one).")

    flow.heading("Largest regressions", 11)
    compared = sum(c.compared for c in checks + ([paper_check] if paper_check is not None else []))
    rows, any_reg = _largest(checks + ([paper_check] if paper_check is not None else []))
    if not compared:
        flow.para("No cell was compared with a reference, so none can be called a regression.", size=7.5)
    elif not rows:
        flow.para(f"None: all {compared} compared cells equal their reference.", size=7.5)
    else:
        flow.para("Regressions (worse than the reference beyond the tolerance), largest first." if any_reg else
                  "No regression: no compared cell is worse than its reference beyond its tolerance. The cells "
                  "furthest from their reference:", size=7.5)
        flow.table(["Cell", "Reference", "Expected", "Got", "Δ", "Tolerance", "Verdict"], rows, size=6.5,
                   colors={6: _verdict_color}, max_share=0.6)

    flow.heading("References: chance and an untrained encoder", 11)
    for line in _reference_lines(results):
        flow.para(line, size=7.5)

    flow.heading("Claims at a glance", 11)
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICT_ORDER}
    flow.para(", ".join(f"{n} {v}" for v, n in counts.items()) + ". Each verdict is per group of runs of one scale "
              "and protocol; 'inconclusive': the difference is inside the noise.", size=7.5)
    judged = [c for c in claims if c.verdict != NOT_RUN]
    if judged:
        flow.table(["Verdict", "Claim (the numbers: claims scorecard)", "Scale", "n per arm"],
                   [[c.verdict, f"{c.statement} ({c.source})", c.scale.split(":")[0] if c.scale else "",
                     textwrap.shorten(n_text(c), 40) if c.n else ""] for c in judged], size=6.5,
                   colors={0: _verdict_color}, max_share=0.7, keep_whole=False)


def _random_init_noise(d: pd.DataFrame) -> tuple[Noise, dict[str, float]]:
    """The noise of a method-vs-random-init linear-probe difference: the methods' pooled seed std (runs of two or
    more seeds), else the linear probe's documented floor; and each method's tolerance for its seed count."""
    per = d[d["method"] != RANDOM_INIT].groupby("method")["value"].agg(["std", "count"])
    sd_df = pooled(list(per["std"]), list(per["count"]))
    if sd_df is not None:
        noise = Noise(sd_df[0], sd_df[1], "pooled seed std of the methods' runs")
    else:
        floor = floor_for("linear", "top1")
        noise = Noise(floor.sd, math.inf, floor.source)
    n_init = int((d["method"] == RANDOM_INIT).sum())
    return noise, {m: tolerance(noise, int(n), max(n_init, 1), 0.05) for m, n in per["count"].items()}


def _reference_lines(results: pd.DataFrame) -> list[str]:
    """Per non-paper benchmark: each method's linear probe against random init and chance."""
    out = []
    lin = results[(results["suite"] == "linear") & (results["metric"] == "top1")] if len(results) else results
    if not len(lin):
        return ["No linear-probe results: no reference to show."]
    for bench, d in lin.groupby(lin["benchmark"].fillna("unassigned")):
        if bench in PAPER_TABLES:
            continue
        d = d.assign(value=pd.to_numeric(d["value"], errors="coerce"))
        means = d.groupby("method")["value"].mean()
        parts = [f"{method_label(m)} {means[m]:.1f}" for m in figures._methods(d) if m != RANDOM_INIT]
        refs = figures.reference_values(d, "linear")
        line = f"{bench}: linear probe top-1 " + ", ".join(parts) + "; " + "; ".join(lbl for lbl, _ in refs)
        if RANDOM_INIT in means:
            noise, tol = _random_init_noise(d)
            below = [method_label(m) for m in means.index if m != RANDOM_INIT
                     and means[m] - means[RANDOM_INIT] < -tol[m]]
            within = [method_label(m) for m in means.index if m != RANDOM_INIT
                      and abs(means[m] - means[RANDOM_INIT]) <= tol[m]]
            line += (f". Below the untrained encoder: {', '.join(below)} — at this scale their pretraining has not "
                     "yet helped the linear probe" if below else ". No method is below the untrained encoder")
            line += (f"; within the noise of it: {', '.join(within)}" if within else "")
            line += (f" (a difference counts beyond ± t·sd·sqrt(1/n_method + 1/n_init) at alpha 0.05, "
                     f"{noise.describe()}).")
        else:
            line += (". No untrained (random-init) encoder in these results: a run folder with extra.random_init: "
                     "true adds the reference.")
        out.append(line)
    return out or ["Only paper-table results: their references are the paper's numbers."]


def _paper_tables(flow: Flow, results: pd.DataFrame, agg: pd.DataFrame, tables: list[str],
                  verdicts: dict[tuple, str]) -> tuple[list[TableView], list[str]]:
    """Each paper table with runs as a drawn table; returns (views, not-run lines)."""
    views, not_run = [], []
    started = False
    for t in tables:
        view = build_table(t, agg)
        views.append(view)
        if view.cells["status"].isin(["not run", "empty"]).all():  # nothing reproduced (invalid cells are shown)
            grid = grid_of(t)
            n_paper = int(view.cells["paper"].notna().sum())
            not_run.append(f"{TITLES[t]} — {n_paper} paper cells; runs with `canbench grid submit {grid}` "
                           "(any scale)")
            continue
        if not started:
            flow.heading("The paper's tables", 13)
            flow.para("Paper: the paper's number. Reproduced: mean ± std over seeds (n). Δ = reproduced − paper, "
                      "only where the protocol fingerprint matches the paper's; n/c [k]: not comparable, "
                      "footnote k names each differing key. Verdict: the check against the paper.", size=7)
            flow.gap(0.05)
            started = True
        single = len({c for c in view.cells["column"]}) == 1
        header = (["Variant" if t == "table5" else "Method"] + ([] if single else ["Column"])
                  + ["Paper", "Reproduced (mean ± std, n)", "Δ", "Verdict"])
        rows = []
        for rec, lr in zip(view.cells.to_dict("records"), view.long_rows):
            v = verdicts.get(tuple(str(rec[k]) for k in CELL_KEYS))
            if v is None or v == UNREFERENCED:
                v = {"compared": "compared", "not run": "not run", "empty": "", "no paper number": "no paper number"
                     }.get(rec["status"], rec["status"])
            elif v == MISSING:
                v = "not run"
            row = [lr[0]] + ([] if single else [lr[1]]) + [lr[2], lr[3], lr[4], v]
            rows.append(row)
        flow.table(header, rows, size=7, title=view.title, colors={len(header) - 1: _verdict_color},
                   group_first=not single)
        for note in view.notes:
            flow.para(note, size=6, color="0.25", indent=0.1)
        flow.gap(0.1)
    return views, not_run


def _other_benchmarks(flow: Flow, agg: pd.DataFrame, benches: list[str]) -> None:
    for b in benches:
        view = results_matrix(agg, b)
        if not view.rows:
            continue
        ri = view.header.index("random init") if "random init" in view.header else None
        colors = {ri: lambda _: "0.35"} if ri is not None else {}
        colors[len(view.header) - 1] = lambda _: "0.35"
        flow.table(view.header, view.rows, size=6.5, title=view.title, colors=colors, heading=f"Benchmark {b}")
        for note in view.notes:
            flow.para(note, size=6.5, color="0.25")


def _figures(bench: str, res: pd.DataFrame, cur: pd.DataFrame) -> list[plt.Figure]:
    figs: list[plt.Figure] = []
    if bench == "fig6":
        figs.append(figures.fig_mask_ratio(res))
    elif bench == "fig7":
        figs.append(figures.fig_hparams(res))
    if (bench == "table4" or bench not in SECTION_ORDER) and len(cur):
        figs.append(figures.fig_loss_curves(cur, title=f"Training losses per run of benchmark {bench}"))
    if len(res) and (res["suite"] == "fewshot").any():
        figs.append(figures.fig_fewshot(res))
    if len(res) and (res["suite"] == "shift").any():
        figs.append(figures.fig_robustness(res))
    return figs


def _efficiency(flow: Flow, pretrain: pd.DataFrame) -> None:
    flow.heading("Pretraining efficiency", 13)
    tab = figures.efficiency_table(pretrain)
    if not len(tab):
        flow.para(f"{figures.NOT_RUN}: no run has a summary.json.")
        return
    rows = [[method_label(r["method"]), ARCH_LABELS.get(r["arch"], str(r["arch"])), r["device"], str(int(r["n"]))]
            + [("—" if pd.isna(r[c]) else f"{r[c]:.3g}") for c in figures.EFFICIENCY_COLUMNS[4:]]
            for _, r in tab.iterrows()]
    flow.table(list(figures.EFFICIENCY_COLUMNS), rows, size=7,
               title="Means over runs; device-hours = wall hours x devices (GPU-hours on GPUs, CPU-hours on CPUs)")


def _claims(flow: Flow, claims: list[Claim]) -> None:
    flow.heading("Claims scorecard", 13)
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICT_ORDER}
    flow.para(", ".join(f"{n} {v}" for v, n in counts.items()) + ". Each verdict is per (scale, fingerprint) "
              "group; 'inconclusive': the difference is inside the noise.", size=7.5)
    for c in (c for c in claims if c.verdict != NOT_RUN):
        flow.gap(0.04)
        flow.para(f"{c.statement} ({c.source})", size=7.5, prefix=(f"[{c.verdict.upper()}]",
                                                                   _verdict_color(c.verdict)))
        for label, text in (("n", n_text(c) if c.n else ""), ("numbers", c.evidence), ("noise", c.noise),
                            ("paper", c.paper), ("scale", c.scale)):
            if text:
                flow.para(f"{label}: {text}", size=6.5, indent=0.25, color="0.2")
    rest = [c for c in claims if c.verdict == NOT_RUN]
    if rest:
        flow.gap(0.06)
        flow.table(["Not run", "Source", "How to run it"], [[c.statement, c.source, c.evidence] for c in rest],
                   size=6.5, title=f"{len(rest)} claims not run")


def _check_section(flow: Flow, result: CheckResult) -> None:
    flow.heading(f"Reproduction check against {result.reference}", 13)
    flow.para(result.summary, size=7.5)
    df = result.cells[result.cells["verdict"] != UNREFERENCED].copy()
    df["_o"] = df["verdict"].map({v: i for i, v in enumerate(SEVERITY)})
    rows = []
    for r in df.sort_values("_o", kind="stable").to_dict("records"):
        num = r["verdict"] in (PASS, REGRESSION, IMPROVEMENT, INCONCLUSIVE)
        rows.append([cell_name(r), f"{r['expected']:.4g}" if num else "—",
                     f"{r['got']:.4g} (n={r['got_n']})" if num else "—", f"{r['diff']:+.3g}" if num else "—",
                     f"{r['tolerance']:.3g}" if num else "—", r["verdict"],
                     "" if num and r["verdict"] != INCONCLUSIVE else textwrap.shorten(r["reason"], 90)])
    flow.table(["Cell", "Expected", "Got", "Δ", "Tolerance", "Verdict", "Why"], rows, size=6,
               colors={5: _verdict_color}, max_share=0.55)


def _incomparable(flow: Flow, views: list[TableView]) -> None:
    frames = [v.cells for v in views if len(v.cells)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["status"])
    df = df[df["status"] == "incomparable"]
    if not len(df):
        return
    flow.heading("Cells not compared with the paper", 13)
    for reason, d in df.groupby("reason", sort=False):
        names = [f"{t} {r} / {c}" for t, r, c in zip(d["table"], d["row"], d["column"])]
        flow.para(f"{len(d)} cells: " + ", ".join(names), size=7, weight="bold")
        flow.para("why: " + reason, size=6.5, indent=0.2, color="0.25")


def _commands(runs: pd.DataFrame) -> list[list[str]]:
    roots = sorted({str(Path(d).parent) for d in runs["run_dir"]}) if len(runs) else []
    rows = []
    for root in roots:
        path = Path(root) / COMMANDS_FILE
        entries = []
        if path.is_file():
            for ln in path.read_text().splitlines():
                try:
                    entries.append(json.loads(ln))
                except ValueError:
                    continue
        if not entries:
            rows.append([root, "—", "not recorded (submitted before canbench recorded command lines, or not a grid)"])
        for e in entries[-3:]:  # the latest submissions
            rows.append([root, str(e.get("time", "?")),
                         f"{e.get('command', '?')}  [in {e.get('cwd', '?')}; code {e.get('code_version', '?')}]"])
    return rows


def _provenance(flow: Flow, runs: pd.DataFrame, results: pd.DataFrame, pretrain: pd.DataFrame) -> None:
    flow.heading("Provenance", 13)
    cmd = shlex.join(["canbench", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("canbench", "__main__.py") \
        else shlex.join(sys.argv)
    flow.para(f"This report: code {code_version()}, made on {platform.node()} ({platform.platform()}) by `{cmd}`.",
              size=7)
    versions = pd.Series([str(v) for v in pretrain.get("code_version", []) if isinstance(v, str)]).value_counts()
    flow.para("Code versions of the runs: " + (", ".join(f"{v} ({n} runs)" for v, n in versions.items())
                                               or "not recorded") + ".", size=7)
    flow.para("Hardware of the runs: " + "; ".join(_hardware(results, pretrain)) + ".", size=7)
    if not len(runs):
        return
    flow.table(["Grid root", "Submitted", "Command line"], _commands(runs), size=6.5,
               title="Command line of each grid", max_share=0.7)
    rows = []
    for r in runs.sort_values(["benchmark", "run_name"]).to_dict("records"):
        steps = r.get("steps")
        hours = r.get("device_hours")
        rows.append([str(r["benchmark"]), str(r.get("run_name") or Path(r["run_dir"]).name), str(r.get("run_id")),
                     config_fingerprint(r.get("recipe")),
                     "untrained" if r.get("method") == RANDOM_INIT else str(r.get("state")),
                     "—" if steps is None or (isinstance(steps, float) and math.isnan(steps)) else str(int(steps)),
                     figures.device_of(r.get("fingerprint")),
                     "—" if hours is None or pd.isna(hours) else f"{float(hours):.3g}",
                     str(r.get("code_version") or "—")[:12]])
    flow.table(["Benchmark", "Run", "Run id", "Config fp", "State", "Steps", "Device", "Device-h", "Code"], rows,
               size=6.5, title="Runs (config fp: digest of the training recipe, seed excluded; equal digests "
                               "trained the same model)")


# ---------------------------------------------------------------- the report
def build_report(results_root: str | os.PathLike, out_pdf: str | os.PathLike, benchmark: str | None = None,
                 title: str = "canbench reproduction report", check_result: CheckResult | None = None,
                 flops_table: pd.DataFrame | None = None) -> Path:
    """Collect ``results_root`` and write the PDF report to ``out_pdf`` (atomically); returns the path."""
    root = Path(results_root)
    results, pretrain, curves = collect(root), collect_pretrain(root), loss_curves(root)
    if benchmark is not None:
        results = results[results["benchmark"] == benchmark]
        pretrain = pretrain[pretrain["benchmark"] == benchmark]
        curves = curves[curves["benchmark"] == benchmark]
        if not len(results) and not len(pretrain):
            log.warning("no runs of benchmark %r under %s; the report will say 'not run'", benchmark, root)
    runs = _runs(results, pretrain)
    present = list(dict.fromkeys(runs["benchmark"])) if len(runs) else []
    tables = [benchmark] if benchmark in PAPER_TABLES else [] if benchmark is not None else list(PAPER_TABLES)
    others = [b for b in SECTION_ORDER[5:] if b in present] + sorted(b for b in present if b not in SECTION_ORDER)
    agg = aggregate(to_cells(results))
    paper_check = _paper_check(results, benchmark)
    checks = [check_result] if check_result is not None else []
    claims = evaluate_claims(results, pretrain, flops_table)
    out_pdf = Path(out_pdf)
    with atomic_path(out_pdf) as tmp:
        with PdfPages(tmp) as pdf:
            flow = Flow(pdf)
            _summary(flow, title, root, benchmark, runs, results, pretrain, claims, checks, paper_check)
            flow.page_break()
            views, not_run = _paper_tables(flow, results, agg, tables, _verdicts(paper_check))
            if benchmark is not None and benchmark not in PAPER_TABLES and benchmark not in present:
                not_run.append(f"benchmark {benchmark}: no runs under {root}")
            if not_run:
                flow.heading("Not run", 13)
                for ln in not_run:
                    flow.para("• " + ln, size=7.5)
            _other_benchmarks(flow, agg, [b for b in others if b not in SECTION_ORDER])
            for bench in [*(t for t in tables if t in present), *others]:
                res = results[results["benchmark"].fillna("unassigned") == bench]
                cur = curves[curves["benchmark"].fillna("unassigned") == bench]
                for fig in _figures(bench, res, cur):
                    flow.figure(fig)
            if benchmark is None or benchmark not in SECTION_ORDER:
                flow.figure(figures.fig_accuracy_vs_compute(results, pretrain))
            _efficiency(flow, pretrain)
            _claims(flow, claims)
            for c in checks:
                _check_section(flow, c)
            _incomparable(flow, views)
            _provenance(flow, runs, results, pretrain)
            flow.close()
            info = pdf.infodict()
            info["Title"] = title
            info["Subject"] = f"canbench report of {root} (code {code_version()})"
    return out_pdf
