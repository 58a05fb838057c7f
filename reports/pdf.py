"""The PDF report: title page, a section per benchmark (tables and figures), the claims scorecard,
a regression summary (when a check ran) and the cells that could not be compared with the paper.

Text pages are monospaced and wrapped to the page width so nothing is clipped; wide tables are
split into column blocks (see :func:`canbench.reports.tables.to_text`). Written atomically.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from canbench.fingerprint import code_version  # noqa: E402
from canbench.io import atomic_path  # noqa: E402
from canbench.reports import figures  # noqa: E402
from canbench.reports.cells import aggregate, to_cells  # noqa: E402
from canbench.reports.check import UNREFERENCED, CheckResult, cell_name, describe  # noqa: E402
from canbench.reports.claims import VERDICT_ORDER, evaluate_claims, n_text  # noqa: E402
from canbench.reports.collect import collect, collect_pretrain, loss_curves  # noqa: E402
from canbench.reports.tables import TableView, build_views, to_text  # noqa: E402

log = logging.getLogger(__name__)

A4 = (8.27, 11.69)
WIDTH = 108  # monospaced characters per line at FONT_SIZE on A4 with margins
LINES = 80  # lines per text page
FONT_SIZE = 7.0
SECTION_ORDER = ("table1", "table2", "table3", "table4", "table5", "fig6", "fig7")


def _wrap(text: str, width: int = WIDTH, indent: str = "") -> list[str]:
    """Wrap one paragraph (keeping blank lines) to ``width`` characters."""
    if not text.strip():
        return [""]
    return textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=True) or [""]


def _lines(fig: plt.Figure, lines: list[str], x: float, top: float, size: float) -> None:
    """Draw monospaced lines at a fixed pitch (one text artist per line, so spacing never drifts)."""
    pitch = size * 1.3 / 72 / fig.get_figheight()
    for i, ln in enumerate(lines):
        if ln:
            fig.text(x, top - i * pitch, ln, fontsize=size, family="monospace", va="top")


def text_pages(pdf: PdfPages, title: str, lines: list[str]) -> int:
    """Write ``lines`` (each at most WIDTH chars; longer ones are wrapped) as monospaced A4 pages."""
    flat: list[str] = []
    for ln in lines:
        flat += [ln] if len(ln) <= WIDTH else _wrap(ln, WIDTH, "    ")
    pages = [flat[i:i + LINES] for i in range(0, max(1, len(flat)), LINES)] or [[]]
    for i, chunk in enumerate(pages):
        fig = plt.figure(figsize=A4)
        head = title if len(pages) == 1 else f"{title} ({i + 1}/{len(pages)})"
        fig.text(0.06, 0.965, head, fontsize=11, weight="bold", va="top")
        _lines(fig, chunk, 0.06, 0.935, FONT_SIZE)
        pdf.savefig(fig)
        plt.close(fig)
    return len(pages)


def _save(pdf: PdfPages, fig: plt.Figure) -> None:
    pdf.savefig(fig)
    plt.close(fig)


def _hardware(results: pd.DataFrame, pretrain: pd.DataFrame) -> list[str]:
    seen = set()
    for fps in (results.get("fingerprint", []), pretrain.get("fingerprint", [])):
        for fp in fps:
            if isinstance(fp, dict) and fp.get("device_type"):
                seen.add(f"{fp.get('device_count', 1)} x {fp.get('device_name') or fp.get('device_type')} "
                         f"(torch {fp.get('torch', '?')}, timm {fp.get('timm', '?')})")
    return sorted(seen) or ["not recorded in the results"]


def _scale_lines(runs: pd.DataFrame) -> list[str]:
    if not len(runs):
        return ["no runs"]
    out = []
    keys = ["benchmark", "scale", "preset", "arch", "pretrain_data", "epochs", "max_steps"]
    g = runs.assign(**{k: runs[k].astype(str) for k in keys}).groupby(keys, dropna=False)
    for (bench, scale, preset, arch, data, ep, steps), d in g:
        states = ", ".join(f"{n} {s}" for s, n in d["state"].value_counts().items())
        out.append(f"{bench}: scale {scale}, preset {preset}, {arch} on {data}, {ep} ep, max_steps {steps} — "
                   f"{len(d)} runs ({states})")
    return out


def _title_page(pdf: PdfPages, title: str, root: Path, runs: pd.DataFrame, results: pd.DataFrame,
                pretrain: pd.DataFrame, benchmark: str | None) -> None:
    lines = [f"results root: {root}", f"benchmark:    {benchmark or 'all'}",
             f"code version: {code_version()}", f"created:      {_dt.datetime.now().isoformat(timespec='seconds')}",
             f"host:         {platform.node()} ({platform.platform()})", "", "hardware of the runs:"]
    lines += [f"  {h}" for h in _hardware(results, pretrain)]
    lines += ["", "scale (per benchmark):"] + [f"  {s}" for s in _scale_lines(runs)]
    lines += ["", "Reproduced numbers are compared with the paper only where the protocol fingerprint matches",
              "the paper's protocol; other cells are shown but marked n/c with the reason."]
    flat = [w for ln in lines for w in _wrap(ln, 95, "      ")]
    fig = plt.figure(figsize=A4)
    fig.text(0.5, 0.9, title, ha="center", fontsize=18, weight="bold", wrap=True)
    fig.text(0.5, 0.86, "CAN / SimCLR / MAE reproduction (canbench)", ha="center", fontsize=11, color="0.3")
    _lines(fig, flat[:70], 0.07, 0.82, 8)
    _save(pdf, fig)


def _figures_for(bench: str, res: pd.DataFrame, pre: pd.DataFrame, cur: pd.DataFrame) -> list[plt.Figure]:
    figs: list[plt.Figure] = []
    if bench == "fig6":
        figs.append(figures.fig_mask_ratio(res))
    elif bench == "fig7":
        figs.append(figures.fig_hparams(res))
    elif bench == "table4":
        figs.append(figures.fig_loss_curves(cur))
    elif bench not in SECTION_ORDER:
        figs += [figures.fig_loss_curves(cur), figures.fig_accuracy_vs_compute(res, pre)]
    if len(res) and (res["suite"] == "fewshot").any():
        figs.append(figures.fig_fewshot(res))
    if len(res) and (res["suite"] == "shift").any():
        figs.append(figures.fig_robustness(res))
    return figs


def _incomparable_lines(views: list[TableView]) -> list[str]:
    frames = [v.cells for v in views if len(v.cells)]
    if not frames:
        return ["no paper-table cells were reproduced"]
    df = pd.concat(frames, ignore_index=True)
    df = df[df["status"] == "incomparable"]
    if not len(df):
        return ["every reproduced paper-table cell was compared with the paper"]
    out = []
    for reason, d in df.groupby("reason", sort=False):
        names = [f"{t} {r} / {c}" for t, r, c in zip(d["table"], d["row"], d["column"])]
        out.append(f"{len(d)} cells: " + ", ".join(names))
        out += _wrap("  why: " + reason, WIDTH, "       ")
        out.append("")
    return out


def _check_lines(result: CheckResult) -> list[str]:
    """The summary line, then every reference cell: compared ones with their numbers, others with the reason."""
    lines = _wrap(result.summary, WIDTH, "    ") + [""]
    df = result.cells[result.cells["verdict"] != UNREFERENCED]
    for r in df.to_dict("records"):
        lines += _wrap(f"{r['verdict'].upper():12s} {cell_name(r)}: {describe(r)}", WIDTH, "             ")
    return lines


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
    runs = pd.concat([results.drop_duplicates("run_dir"), pretrain]).drop_duplicates("run_dir") \
        if len(results) or len(pretrain) else results
    present = [b for b in dict.fromkeys(runs["benchmark"].fillna("unassigned"))] if len(runs) else []
    if benchmark is not None:
        sections = [benchmark]
    else:
        sections = [b for b in SECTION_ORDER if b.startswith("table") or b in present]
        sections += sorted(b for b in present if b not in sections)
    all_views: list[TableView] = []
    agg = aggregate(to_cells(results))
    out_pdf = Path(out_pdf)
    with atomic_path(out_pdf) as tmp:
        with PdfPages(tmp) as pdf:
            _title_page(pdf, title, root, runs, results, pretrain, benchmark)
            for bench in sections:
                res = results[results["benchmark"].fillna("unassigned") == bench]
                pre = pretrain[pretrain["benchmark"].fillna("unassigned") == bench]
                cur = curves[curves["benchmark"].fillna("unassigned") == bench]
                views = build_views(results, benchmark=bench, agg=agg)
                all_views += views
                lines: list[str] = []
                for v in views:
                    lines += to_text(v, WIDTH) + [""]
                n_runs = res["run_dir"].nunique() if len(res) else pre["run_dir"].nunique() if len(pre) else 0
                if not n_runs:
                    lines += [f"benchmark {bench}: {figures.NOT_RUN} (no runs under {root})"]
                text_pages(pdf, f"Benchmark {bench} ({n_runs} runs)", lines)
                if n_runs:
                    for fig in _figures_for(bench, res, pre, cur):
                        _save(pdf, fig)
            _save(pdf, figures.fig_efficiency(pretrain))
            if benchmark is None or benchmark not in SECTION_ORDER:
                _save(pdf, figures.fig_accuracy_vs_compute(results, pretrain))
            claims = evaluate_claims(results, pretrain, flops_table)
            counts = {v: sum(c.verdict == v for c in claims) for v in VERDICT_ORDER}
            lines = _wrap(", ".join(f"{n} {v}" for v, n in counts.items()) + ". Each verdict is per (scale, "
                          "fingerprint) group; 'inconclusive': the difference is inside the noise.", WIDTH, "") + [""]
            for c in claims:
                lines += _wrap(f"[{c.verdict.upper()}] {c.statement} ({c.source})", WIDTH, "    ")
                if c.n:
                    lines += _wrap(f"    n:       {n_text(c)}", WIDTH, "             ")
                lines += _wrap(f"    numbers: {c.evidence}", WIDTH, "             ")
                if c.noise:
                    lines += _wrap(f"    noise:   {c.noise}", WIDTH, "             ")
                if c.paper:
                    lines += _wrap(f"    paper:   {c.paper}", WIDTH, "             ")
                if c.scale:
                    lines += _wrap(f"    scale:   {c.scale}", WIDTH, "             ")
                lines.append("")
            text_pages(pdf, "Claims scorecard", lines)
            if check_result is not None:
                text_pages(pdf, f"Reproduction check against {check_result.reference}", _check_lines(check_result))
            text_pages(pdf, "Cells not compared with the paper", _incomparable_lines(all_views))
            info = pdf.infodict()
            info["Title"] = title
            info["Subject"] = f"canbench report of {root} (code {code_version()})"
    return out_pdf
