"""The paper's Tables 1-5 in the paper's shape: paper value, reproduced mean ± std (n), difference.

A reproduced cell is compared with the paper only when its protocol fingerprint matches the
paper's protocol (:func:`canbench.reports.reference.expected_fingerprint`); otherwise the difference column
says "n/c" with a footnote naming the keys that differ, their values and the paper's. Table 2 carries Fig. 1's
finetune numbers of the same models in a second column. Formats: Markdown, CSV (long form, one
line per cell, every number) and LaTeX.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from canbench.methods import METHODS
from canbench.reports.cells import (
    CELL_KEYS,
    PAPER_TABLES,
    aggregate,
    best_group,
    describe_mismatches,
    to_cells,
)
from canbench.reports.collect import RANDOM_INIT
from canbench.reports.paper import paper_numbers
from canbench.reports.reference import expected_fingerprint

TITLES = {
    "table1": "Table 1: denoising ablation (CAN, ViT-B, 100 ep, IN-1K, linear probe top-1 %)",
    "table2": "Table 2: JFT-300M pretraining, IN-1K linear probe top-1 %",
    "table3": "Table 3: IN-1K pretraining, finetune / linear probe top-1 %",
    "table4": "Table 4: final training losses at 50% masking (lower is better)",
    "table5": "Table 5: ablating CAN's loss terms (ViT-B, 100 ep, IN-1K, linear probe top-1 %)",
}
# table -> (row key fields, [(column label, {field: value})])
SHAPES: dict[str, tuple[list[str], list[tuple[str, dict[str, str]]]]] = {
    "table1": (["method", "arch", "epochs"], [
        ("None", {"protocol": "linear", "metric": "top1", "variant": "none"}),
        ("+noise", {"protocol": "linear", "metric": "top1", "variant": "augment_only"}),
        ("+noise, +loss", {"protocol": "linear", "metric": "top1", "variant": "loss_without_sigma_embedding"}),
        ("Full", {"protocol": "linear", "metric": "top1", "variant": "full"})]),
    "table2": (["method", "arch", "epochs"], [("IN-1K linear top-1", {"protocol": "linear", "metric": "top1"}),
                                              ("Finetune (Fig. 1)", {"table": "fig1", "protocol": "finetune",
                                                                     "metric": "top1"})]),
    "table3": (["method", "arch", "epochs"], [("Finetune", {"protocol": "finetune", "metric": "top1"}),
                                              ("Linear probe", {"protocol": "linear", "metric": "top1"})]),
    "table4": (["method"], [("Contrastive loss", {"protocol": "train_loss", "metric": "contrastive_loss"}),
                            ("Reconstruction loss", {"protocol": "train_loss", "metric": "reconstruction_loss"})]),
    "table5": (["variant"], [("ImageNet top-1", {"protocol": "linear", "metric": "top1"})]),
}
def method_label(method: str) -> str:
    """How a method prints: its class's ``label`` when registered (SimCLR†), else the name as given."""
    if method == RANDOM_INIT:
        return "random init"
    cls = METHODS.get(method)
    return cls.label if cls is not None else method
ARCH_LABELS = {"vit_base": "ViT-B", "vit_large": "ViT-L", "vit_small": "ViT-S", "vit_tiny": "ViT-Ti",
               "vit_micro": "ViT-micro", "resnet50": "R50", "resnet200x2": "R200x2", "swin_t": "Swin-T"}
LONG_COLUMNS = [*CELL_KEYS[:1], "row", "column", *CELL_KEYS[1:], "paper", "mean", "std", "n", "diff", "status",
                "reason", "paper_note", "runs"]


@dataclass
class TableView:
    """A rendered table: header, string rows, footnotes, and every cell in long form."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    cells: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LONG_COLUMNS))
    long_rows: list[list[str]] = field(default_factory=list)  # [row, column, paper, reproduced, Δ] per cell


def is_loss(metric: str) -> bool:
    """Whether ``metric`` is a loss (formatted with 4 significant digits, lower is better)."""
    return "loss" in metric


def fmt_value(v: float, metric: str) -> str:
    """A reproduced number: accuracies with 2 decimals, losses with 4 significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.4g}" if is_loss(metric) else f"{v:.2f}"


def fmt_mean_std(mean: float, std: float, n: int, metric: str) -> str:
    """``67.20 ± 0.31 (n=3)``; the ± part only with two or more seeds."""
    if not n:
        return "—"
    s = fmt_value(mean, metric)
    if n > 1 and not math.isnan(std):
        s += f" ± {std:.2g}" if is_loss(metric) else f" ± {fmt_value(std, metric)}"
    return f"{s} (n={n})"


def row_label(key: dict[str, str], fields: list[str]) -> str:
    """A human row label, e.g. 'SimCLR† ViT-L 800 ep' or 'AN'."""
    parts = []
    for f in fields:
        v = key.get(f, "")
        if f == "method":
            parts.append(v[len("prior:"):].replace("_", " ") if v.startswith("prior:") else method_label(v))
        elif f == "arch":
            parts.append(ARCH_LABELS.get(v, v))
        elif f == "epochs":
            parts.append(f"{v} ep" if v else "")
        else:
            parts.append(v)
    return " ".join(p for p in parts if p)


class _Notes:
    """Numbered, de-duplicated footnotes."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i + 1}] {t}" for i, t in enumerate(self.items)]


def build_table(table: str, agg: pd.DataFrame, paper: pd.DataFrame | None = None) -> TableView:
    """One paper table (``table1``..``table5``) from aggregated cells (:func:`aggregate` output)."""
    if table not in SHAPES:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(SHAPES)}")
    paper = paper_numbers() if paper is None else paper
    row_fields, columns = SHAPES[table]
    columns = [(label, {"table": table, **match}) for label, match in columns]
    tables = {match["table"] for _, match in columns}
    pap = paper[paper["table"].isin(tables)]
    rep = agg[agg["table"].isin(tables)] if len(agg) else agg

    def in_columns(df: pd.DataFrame) -> pd.DataFrame:
        keep = pd.Series(False, index=df.index)
        for _, match in columns:
            sel = pd.Series(True, index=df.index)
            for k, v in match.items():
                sel &= df[k] == v
            keep |= sel
        return df[keep]

    pap, rep = in_columns(pap), in_columns(rep) if len(rep) else rep
    row_keys: list[tuple] = []
    for df in (pap, rep):
        for rec in df.to_dict("records"):
            rk = tuple(rec[f] for f in row_fields)
            if rk not in row_keys:
                row_keys.append(rk)
    notes = _Notes()
    header = ["Method" if row_fields != ["variant"] else "Variant"]
    for label, _ in columns:
        header += [f"{label} paper", f"{label} reproduced", f"{label} Δ"]
    rows, long = [], []
    for rk in row_keys:
        key_base = dict(zip(row_fields, rk))
        label = row_label(key_base, row_fields)
        out = [label]
        for col_label, match in columns:
            sel_p = pd.Series(True, index=pap.index)
            sel_r = pd.Series(True, index=rep.index)
            for k, v in {**key_base, **match}.items():
                sel_p &= pap[k] == v
                sel_r &= rep[k] == v
            p_rows, r_rows = pap[sel_p], rep[sel_r]
            cell = _cell(table, label, col_label, match, key_base, p_rows, r_rows, notes)
            long.append(cell)
            out += [cell["_paper_txt"], cell["_repro_txt"], cell["_diff_txt"]]
        rows.append(out)
    cells = pd.DataFrame([{k: c.get(k) for k in LONG_COLUMNS} for c in long], columns=LONG_COLUMNS)
    long_rows = [[c["row"], c["column"], c["_paper_txt"], c["_repro_txt"], c["_diff_txt"]] for c in long]
    return TableView(name=table, title=TITLES[table], header=header, rows=rows, notes=notes.lines(), cells=cells,
                     long_rows=long_rows)


def _cell(table: str, row: str, column: str, match: dict, key_base: dict, p_rows: pd.DataFrame,
          r_rows: pd.DataFrame, notes: _Notes) -> dict[str, Any]:
    """One table cell: paper value, chosen reproduction group, difference or why not compared."""
    metric = match["metric"]
    paper_val = float(p_rows["value"].iloc[0]) if len(p_rows) else None
    paper_note = str(p_rows["note"].iloc[0]) if len(p_rows) else ""
    key = {k: "" for k in CELL_KEYS}
    key.update({"table": table, **key_base, **match})
    if len(p_rows):
        key.update({k: p_rows[k].iloc[0] for k in ("method", "arch", "pretrain_data", "epochs", "variant")})
    elif len(r_rows):
        key.update({k: r_rows[k].iloc[0] for k in CELL_KEYS})
    c: dict[str, Any] = {"table": table, "row": row, "column": column, **key, "paper": paper_val,
                         "mean": math.nan, "std": math.nan, "n": 0, "diff": math.nan, "reason": "",
                         "paper_note": paper_note, "runs": ""}
    c["_paper_txt"] = "—" if paper_val is None else (f"{paper_val:g}" if is_loss(metric) else f"{paper_val:.1f}")
    if paper_note and ("INCONSISTENT" in paper_note or "garbled" in paper_note or "implied" in paper_note):
        c["_paper_txt"] += " " + notes.ref(f"paper: {paper_note}")
    c["_repro_txt"], c["_diff_txt"] = "—", ""
    if not len(r_rows):
        c["status"] = "not run" if paper_val is not None else "empty"
        return c
    expected = expected_fingerprint(key) if paper_val is not None else None
    grp, diff = best_group(r_rows, expected, keys=list(expected) if expected else None)
    c.update(mean=grp["mean"], std=grp["std"], n=grp["n_valid"], runs=" ".join(map(str, grp["runs"])))
    c["_repro_txt"] = fmt_mean_std(grp["mean"], grp["std"], grp["n_valid"], metric)
    if len(r_rows) > 1:
        c["_repro_txt"] += " " + notes.ref(f"{len(r_rows)} reproductions of one cell with different protocol "
                                           "fingerprints; the one closest to the paper's protocol is shown")
    unusable = grp["invalid"] + grp["stale"]
    if unusable:  # shown, never compared: a NaN seed or a stale result is not a smaller n
        c["status"] = "stale" if grp["stale"] and not grp["invalid"] else "invalid"
        c["reason"] = f"{len(unusable)} of {grp['n']} results unusable: " + "; ".join(unusable)
        c["_diff_txt"] = f"{c['status']} " + notes.ref(c["reason"])
        return c
    if paper_val is None:
        c["status"], c["reason"] = "no paper number", "the paper prints no number for this cell"
    elif diff:
        c["status"] = "incomparable"
        c["reason"] = "protocol differs from the paper's: " + describe_mismatches(diff, limit=12)
        c["_diff_txt"] = "n/c " + notes.ref(c["reason"])
    else:
        c["status"] = "compared"
        c["diff"] = grp["mean"] - paper_val
        c["_diff_txt"] = f"{c['diff']:+.4g}" if is_loss(metric) else f"{c['diff']:+.2f}"
    return c


def results_view(agg: pd.DataFrame, benchmark: str) -> TableView:
    """Every aggregated cell of one benchmark as a flat listing (all suites, also non-paper ones).

    Columns with one value for every row (often arch, data, epochs) move into the title.
    """
    df = agg[agg["table"] == benchmark] if len(agg) else agg
    header = ["Method", "Arch", "Data", "Epochs", "Protocol", "Metric", "Variant", "Set", "Shots", "Reproduced"]
    recs = sorted(df.to_dict("records"), key=lambda r: (r["method"], r["protocol"], r["metric"], r["variant"],
                                                        r["dataset"], float(r["shots"] or 0)))
    rows = []
    for rec in recs:
        rows.append([method_label(rec["method"]), ARCH_LABELS.get(rec["arch"], rec["arch"]),
                     rec["pretrain_data"], rec["epochs"], rec["protocol"], rec["metric"], rec["variant"],
                     rec["dataset"], rec["shots"], fmt_mean_std(rec["mean"], rec["std"], rec["n"], rec["metric"])])
    title = f"Results of benchmark '{benchmark}' (mean ± std over seeds)"
    constant = [i for i in (1, 2, 3) if rows and len({r[i] for r in rows}) == 1]
    if constant:
        title += "; " + ", ".join(f"{header[i].lower()} {rows[0][i] or '—'}" for i in constant)
    keep = [i for i in range(len(header)) if i == 0 or i == len(header) - 1
            or (i not in constant and any(r[i] for r in rows))]
    return TableView(name=f"results:{benchmark}", title=title, header=[header[i] for i in keep],
                     rows=[[r[i] for i in keep] for r in rows])


SUITE_ORDER = ("linear", "knn", "fewshot", "finetune", "shift", "train_loss")
# classes of the evaluation sets canbench reads (the built-in families are counted from canbench.data.builtin)
CLASS_COUNTS = {"digits": 10, "cifar10": 10, "cifar100": 100, "caltech101": 101, "stanfordcars": 196, "dtd": 47,
                "oxfordiiitpet": 37, "flowers102": 102, "sun397": 397, "in1k": 1000, "imagenet": 1000}


def chance(protocol: str, metric: str, dataset: str, pretrain_data: str = "") -> float | None:
    """Top-1 / top-5 of guessing on the evaluation set (100 k / classes), where its class count is known."""
    from canbench.data.builtin import HELDOUT_CLASSES, MAIN_CLASSES

    k = {"top1": 1, "top1_best": 1, "mean_shifted_top1": 1, "top5": 5, "top5_best": 5}.get(metric)
    if k is None or protocol == "train_loss":
        return None
    name = dataset or pretrain_data or ""
    classes = {"builtin_heldout": len(HELDOUT_CLASSES), **CLASS_COUNTS}.get(name)
    if classes is None and name.startswith("builtin"):  # the built-in test split and its shifted variants
        classes = len(MAIN_CLASSES)
    return None if classes is None else 100.0 * min(k, classes) / classes


def results_matrix(agg: pd.DataFrame, benchmark: str) -> TableView:
    """One benchmark's cells with the methods side by side (plus random init and chance as references).

    Rows are (protocol, metric, set, shots) in :data:`SUITE_ORDER`; a column per method (registry order, a
    random-init encoder last) holds ``mean ± std (n=k)``. Variants of a method (ablations) get their own
    column. Title and notes say what is constant and what the references are.
    """
    df = agg[agg["table"] == benchmark] if len(agg) else agg
    if not len(df):
        return TableView(name=f"matrix:{benchmark}", title=f"Results of benchmark '{benchmark}'", header=[], rows=[])
    arms = list(dict.fromkeys(zip(df["method"], df["variant"])))
    order = {m: i for i, m in enumerate(METHODS)}
    arms.sort(key=lambda a: (a[0] == RANDOM_INIT, order.get(a[0], 99), a[0], a[1]))
    labels = [method_label(m) + (f" {v}" if v else "") for m, v in arms]
    pdata = str(df["pretrain_data"].iloc[0])
    keys = sorted({(r["protocol"], r["metric"], r["dataset"], r["shots"]) for r in df.to_dict("records")},
                  key=lambda k: (SUITE_ORDER.index(k[0]) if k[0] in SUITE_ORDER else 99, k[0],
                                 k[1] not in ("top1", "mean_shifted_top1"), k[1], k[2], float(k[3] or 0)))
    cell = {(r["protocol"], r["metric"], r["dataset"], r["shots"], r["method"], r["variant"]): r
            for r in df.to_dict("records")}
    rows = []
    for p, m, d, k in keys:
        out = [p.replace("_", " "), m, d.replace("builtin_", "") if d else "", k]
        for arm in arms:
            r = cell.get((p, m, d, k, *arm))
            out.append("—" if r is None else fmt_mean_std(r["mean"], r["std"], r["n"], m))
        c = chance(p, m, d, pdata)
        rows.append(out + ["" if c is None else f"{c:.1f}"])
    header = ["Protocol", "Metric", "Set", "Shots", *labels, "chance"]
    keep = [i for i in range(len(header)) if i < 2 or i >= 4 or any(r[i] for r in rows)]
    archs = sorted({ARCH_LABELS.get(a, a) for a in df["arch"]})
    title = (f"Results of benchmark '{benchmark}': {', '.join(archs)} pretrained on {pdata}, "
             f"{', '.join(sorted(set(df['epochs'])))} ep (mean ± std over seeds, n)")
    notes = ["chance: 100 x k / classes of the evaluation set (k = 1 for top-1, 5 for top-5)."]
    if RANDOM_INIT in {a[0] for a in arms}:
        notes.append("random init: the same encoder untrained (step 0), through the same evaluation: what "
                     "pretraining has to beat.")
    else:
        notes.append("random init: no untrained encoder in these results (a run with extra.random_init: true "
                     "adds this reference).")
    if any(p == "train_loss" for p, *_ in keys):
        notes.append("train loss rows: the final training losses (mean of the last tenth of the steps; lower is "
                     "better).")
    return TableView(name=f"matrix:{benchmark}", title=title, header=[header[i] for i in keep],
                     rows=[[r[i] for i in keep] for r in rows], notes=notes)


def build_views(results: pd.DataFrame, benchmark: str | None = None, paper: pd.DataFrame | None = None,
                agg: pd.DataFrame | None = None) -> list[TableView]:
    """Paper tables (all five, or the one ``benchmark`` names) plus flat listings of other benchmarks.

    ``agg``: the aggregated cells of ``results`` when the caller already has them.
    """
    agg = aggregate(to_cells(results)) if agg is None else agg
    present = sorted(set(agg["table"])) if len(agg) else []
    if benchmark is not None:
        tables = [benchmark] if benchmark in PAPER_TABLES else []
        others = [benchmark] if benchmark not in PAPER_TABLES else []
    else:
        tables, others = list(PAPER_TABLES), [b for b in present if b not in PAPER_TABLES]
    views = [build_table(t, agg, paper) for t in tables]
    views += [results_view(agg, b) for b in others]
    return views


# ---------------------------------------------------------------- renderers
def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(view: TableView) -> str:
    """A GitHub-flavoured Markdown table with its title and footnotes."""
    lines = [f"### {view.title}", ""]
    if not view.rows:
        return "\n".join(lines + ["_no results_", ""])
    lines.append("| " + " | ".join(map(_md_escape, view.header)) + " |")
    lines.append("|" + "|".join("---" for _ in view.header) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in view.rows]
    if view.notes:
        lines += [""] + [f"{_md_escape(n)}  " for n in view.notes]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                "±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "—": "--"}


def tex_escape(s: str) -> str:
    """Escape LaTeX special characters (and map ±, Δ, †, — to LaTeX)."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(s))


def to_latex(view: TableView) -> str:
    """A ``table`` environment with a ``tabular``; footnotes below it."""
    spec = "l" + "r" * (len(view.header) - 1)
    out = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{tex_escape(view.title)}}}",
           rf"\begin{{tabular}}{{{spec}}}", r"\hline", " & ".join(map(tex_escape, view.header)) + r" \\", r"\hline"]
    out += [" & ".join(map(tex_escape, r)) + r" \\" for r in view.rows]
    out += [r"\hline", r"\end{tabular}"]
    if view.notes:
        out += [r"\par\footnotesize"] + [tex_escape(n) + r"\\" for n in view.notes]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(views: list[TableView]) -> str:
    """All cells of ``views`` in long form (one line per cell) as CSV text."""
    frames = [v.cells for v in views if len(v.cells)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LONG_COLUMNS)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def render(views: list[TableView], fmt: str) -> str:
    """Render views as ``md``, ``csv`` or ``tex`` text."""
    if fmt == "md":
        return "\n".join(to_markdown(v) for v in views)
    if fmt == "tex":
        return "\n".join(to_latex(v) for v in views)
    if fmt == "csv":
        return to_csv(views)
    raise ValueError(f"unknown table format {fmt!r}; expected md, csv or tex")


def _grid_lines(header: list[str], rows: list[list[str]], width: int, max_w: int = 28) -> tuple[list[str], int]:
    """Monospaced grid; cells wrap at ``max_w``; columns that do not fit go to further blocks."""
    import textwrap

    ncol = len(header)
    widths = [min(max_w, max(len(header[i]), *(len(r[i]) for r in rows))) for i in range(ncol)]
    blocks, cur, used = [], [], widths[0]
    for i in range(1, ncol):  # greedily pack columns into blocks that fit; column 0 repeats
        if cur and used + 3 + widths[i] > width:
            blocks.append(cur)
            cur, used = [], widths[0]
        cur.append(i)
        used += 3 + widths[i]
    blocks.append(cur)
    lines: list[str] = []
    for bi, block in enumerate(blocks):
        cols = [0] + block
        if bi:
            lines.append("")

        def emit(cells: list[str], cols: list[int] = cols) -> None:
            wrapped = [textwrap.wrap(cells[j], widths[c]) or [""] for j, c in enumerate(cols)]
            for k in range(max(len(w) for w in wrapped)):
                lines.append(" | ".join((w[k] if k < len(w) else "").ljust(widths[c])
                                        for w, c in zip(wrapped, cols)).rstrip())

        emit([header[c] for c in cols])
        lines.append("-+-".join("-" * widths[c] for c in cols))
        for r in rows:
            emit([r[c] for c in cols])
    return lines, len(blocks)


def to_text(view: TableView, width: int = 110) -> list[str]:
    """Monospaced lines of ``view`` within ``width`` characters (nothing is cut: cells wrap).

    A paper table too wide for its shape is listed one cell per line (row, column, paper,
    reproduced, Δ) instead; other wide tables are split into column blocks.
    """
    import textwrap

    lines = [view.title, "=" * min(width, len(view.title))]
    if not view.rows:
        return lines + ["(no results)"]
    shaped, n_blocks = _grid_lines(view.header, view.rows, width)
    if n_blocks > 1 and view.long_rows:
        shaped, _ = _grid_lines(["Row", "Column", "Paper", "Reproduced", "Δ"], view.long_rows, width, max_w=40)
    lines += shaped
    if view.notes:
        lines.append("")
    for n in view.notes:
        lines += textwrap.wrap(n, width, subsequent_indent="    ")
    return lines
