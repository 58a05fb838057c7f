"""Figures in the paper's styles (matplotlib, Agg). Each takes DataFrames and returns a Figure.

Inputs are the frames of :mod:`canbench.reports.collect` (already filtered to the runs wanted).
With no usable data a figure still comes back, saying "not run at this scale" — never an error.
Accuracy figures carry their references: chance (100 k / classes of the evaluation set) and, when the results
hold an untrained encoder (``extra.random_init``), its number through the same evaluation.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from canbench.methods import METHODS  # noqa: E402
from canbench.reports.collect import RANDOM_INIT  # noqa: E402
from canbench.reports.tables import ARCH_LABELS, chance, method_label  # noqa: E402

NOT_RUN = "not run at this scale"
CAN_DEFAULTS = {k: METHODS["can"].defaults[k] for k in ("l_nce", "sigma_max", "lam")}
PAGE = (8.27, 5.2)  # A4 width; two figures fit one page


def not_run_figure(title: str, detail: str = "") -> Figure:
    """A placeholder figure with the title and 'not run at this scale' (plus an optional detail)."""
    fig = plt.figure(figsize=(PAGE[0], 2.2))
    fig.text(0.5, 0.68, title, ha="center", va="center", fontsize=11, weight="bold", wrap=True)
    fig.text(0.5, 0.42, NOT_RUN, ha="center", va="center", fontsize=10, color="0.35")
    if detail:
        fig.text(0.5, 0.2, detail, ha="center", va="center", fontsize=8, color="0.45", wrap=True)
    return fig


def _color(method: str) -> str:
    if method == RANDOM_INIT:
        return "0.6"
    order = list(METHODS)  # the registry's order picks matplotlib's cycle: can C0 (blue), simclr C1 (orange), ...
    return f"C{order.index(method) % 10}" if method in order else "tab:gray"


def _label(method: str) -> str:
    return method_label(method)


def _methods(df: pd.DataFrame) -> list[str]:
    """Methods present, registry order first, a random-init encoder last."""
    present = list(dict.fromkeys(df["method"]))
    return ([m for m in METHODS if m in present] + sorted(m for m in present if m not in METHODS and m != RANDOM_INIT)
            + [m for m in present if m == RANDOM_INIT])


def reference_values(results: pd.DataFrame, suite: str, metric: str = "top1",
                     dataset: str | None = None) -> list[tuple[str, float]]:
    """(label, y) of the references of one accuracy: the random-init encoder's mean (when present) and chance."""
    out: list[tuple[str, float]] = []
    df = _select(results, suite, metric)
    if dataset is not None and len(df):
        df = df[df["dataset"] == dataset]
    rnd = df[df["method"] == RANDOM_INIT] if len(df) else df
    if len(rnd):
        out.append((f"random init {rnd['value'].mean():.1f} (n={rnd['run_dir'].nunique()})",
                    float(rnd["value"].mean())))
    data = next((str(d) for d in (results["pretrain_data"] if results is not None and len(results) else [])
                 if isinstance(d, str)), "")
    c = chance(suite, metric, dataset or "", data)
    if c is not None:
        out.append((f"chance {c:.1f}", c))
    return out


def draw_references(ax, refs: list[tuple[str, float]]) -> None:
    """Horizontal reference lines (random init dashed grey, chance dotted black), labelled for the legend."""
    for label, y in refs:
        style = dict(color="0.45", ls="--") if label.startswith("random") else dict(color="black", ls=":")
        ax.axhline(y, lw=1.2, label=label, **style)


def dedupe_trainings(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (training recipe, seed, suite, metric, set, shots): the same training reached by two grids
    (or shared between them) is one sample of its method, not two."""
    if not len(df) or "recipe" not in df:
        return df
    key = df["recipe"].map(lambda r: repr(sorted(r.items())) if isinstance(r, dict) else repr(r))
    cols = [c for c in ("seed", "method", "suite", "metric", "dataset", "shots") if c in df]
    return df[~pd.concat([key.rename("_k"), df[cols].astype(str)], axis=1).duplicated()]


def hours_label(pretrain: pd.DataFrame) -> str:
    """What the runs' hours are: GPU-hours, CPU-hours, or device-hours when both kinds ran."""
    kinds = {fp.get("device_type") for fp in pretrain.get("fingerprint", []) if isinstance(fp, dict)} - {None}
    if kinds == {"cuda"}:
        return "GPU-hours"
    if kinds == {"cpu"}:
        return "CPU device-hours"
    return "device-hours (GPU and CPU)" if kinds else "device-hours"


def _select(results: pd.DataFrame, suite: str, metric: str = "top1") -> pd.DataFrame:
    if results is None or not len(results):
        return pd.DataFrame(columns=getattr(results, "columns", []))
    df = results[(results["suite"] == suite) & (results["metric"] == metric)].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df.dropna(subset=["value"])


def _mean_std(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, std (ddof 1, 0 for one seed) and n of ``value`` per group."""
    g = df.groupby(by, dropna=False)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out.rename(columns={"count": "n"})


def _scale_note(df: pd.DataFrame) -> str:
    archs = sorted({ARCH_LABELS.get(a, str(a)) for a in df.get("arch", []) if isinstance(a, str)})
    data = sorted({str(d) for d in df.get("pretrain_data", []) if isinstance(d, str)})
    return f"runs: {', '.join(archs)} on {', '.join(data)}" if archs else ""


OBJECTIVE_COLUMNS = ("mask_ratio", "l_nce", "lam", "sigma_max", "noise_mode")


def _main_setting(df: pd.DataFrame) -> pd.DataFrame:
    """Per method, only the runs with its most common objective setting (mask ratio, loss weights, noise):
    ablation variants (Table 5's AN, a Fig. 6 mask ratio, ...) are not averaged into the method's point."""
    cols = [c for c in OBJECTIVE_COLUMNS if c in df.columns]
    if not len(df) or not cols:
        return df
    sig = df[cols].astype(str).agg("|".join, axis=1)
    keep = pd.Series(False, index=df.index)
    for m in df["method"].unique():
        rows = df["method"] == m
        runs = df.loc[rows, "run_dir"].groupby(sig[rows]).nunique()
        keep |= rows & (sig == runs.idxmax())
    return df[keep]


def fig_accuracy_vs_compute(results: pd.DataFrame, pretrain: pd.DataFrame, suite: str = "linear",
                            metric: str = "top1") -> Figure:
    """Fig. 1 (left) style: accuracy against total training FLOPs and against device-hours, per method (one point
    per (arch, epochs); each training counted once), with the random-init and chance references."""
    title = f"{suite} {metric} vs training compute (Fig. 1 left style)"
    refs = reference_values(results, suite, metric)
    acc = _main_setting(dedupe_trainings(_select(results, suite, metric)))
    if not len(acc) or pretrain is None or not len(pretrain):
        return not_run_figure(title, "needs eval results and pretraining summaries")
    p = pretrain[["run_dir", "flops_train", "steps", "batch_size", "gpu_hours", "device_hours"]].copy()
    for c in ("flops_train", "steps", "batch_size", "gpu_hours", "device_hours"):
        p[c] = pd.to_numeric(p[c], errors="coerce")
    p["train_flops"] = p["flops_train"] * p["steps"] * p["batch_size"]
    p["hours"] = p["gpu_hours"].where(p["gpu_hours"] > 0, p["device_hours"])
    df = acc.merge(p, on="run_dir", how="inner")
    if not len(df):
        return not_run_figure(title, "no run has both an eval result and a summary")
    fig, axes = plt.subplots(1, 2, figsize=PAGE, constrained_layout=True)
    for ax, xcol, xlabel in ((axes[0], "train_flops", "total training FLOPs"),
                             (axes[1], "hours", hours_label(pretrain[pretrain["run_dir"].isin(df["run_dir"])]))):
        for m in _methods(df):
            d = df[df["method"] == m].dropna(subset=[xcol])
            if not len(d):
                continue
            g = d.groupby(["arch", "epochs"], dropna=False).agg(x=(xcol, "mean"), y=("value", "mean"),
                                                                  e=("value", "std")).reset_index()
            g = g.sort_values("x")
            ax.errorbar(g["x"].to_numpy(float), g["y"].to_numpy(float), yerr=g["e"].fillna(0).to_numpy(float),
                        marker="o", color=_color(m), label=_label(m), capsize=3)
        if (df[xcol] > 0).all():
            ax.set_xscale("log")
            # within one decade matplotlib labels the minor ticks too, and they collide: label decades only,
            # plus the data's own extremes
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            xs = df[xcol].to_numpy(float)
            if math.floor(math.log10(xs.min())) == math.floor(math.log10(xs.max())):  # no decade tick inside
                ax.set_xticks(sorted({float(xs.min()), float(xs.max())}))
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
        draw_references(ax, refs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{suite} {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}\n{_scale_note(df)}", fontsize=10)
    return fig


def _grouped_bars(ax, df: pd.DataFrame, cat: str, methods: list[str],
                  chance_of: dict[str, float | None] | None = None) -> None:
    """Bars per method within each category; ``chance_of``: a dotted chance segment over each category."""
    cats = sorted(set(df[cat]), key=str)
    x = np.arange(len(cats))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        d = df[df["method"] == m].set_index(cat)
        ys = [d["mean"].get(c, np.nan) for c in cats]
        es = [d["std"].get(c, 0.0) for c in cats]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, ys, width, yerr=es, capsize=2, color=_color(m),
               label=_label(m), hatch="//" if m == RANDOM_INIT else None, edgecolor="white" if m == RANDOM_INIT
               else None)
    drawn = False
    for xi, c in zip(x, cats):
        y = (chance_of or {}).get(c)
        if y is not None:
            ax.hlines(y, xi - 0.45, xi + 0.45, colors="black", linestyles=":", lw=1.2,
                      label=None if drawn else "chance")
            drawn = True
    ax.set_xticks(x)
    ax.set_xticklabels([str(c).replace("_", "_\n") if len(str(c)) > 12 else str(c) for c in cats], fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def fig_fewshot(results: pd.DataFrame) -> Figure:
    """Fig. 4 style: few-shot top-1 bars per data set, one panel per shot count, bars per method."""
    title = "Few-shot linear transfer (Fig. 4 style)"
    df = _select(results, "fewshot")
    if not len(df):
        return not_run_figure(title)
    df["shots"] = pd.to_numeric(df["shots"], errors="coerce")
    agg = _mean_std(df, ["method", "dataset", "shots"])
    shots = sorted(s for s in set(agg["shots"]) if not math.isnan(s))
    ncols = min(2, len(shots))
    nrows = math.ceil(len(shots) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE[0], 2.6 * nrows + 0.8), squeeze=False,
                             constrained_layout=True)
    methods = _methods(agg)
    for ax, k in zip(axes.flat, shots):
        sub = agg[agg["shots"] == k]
        _grouped_bars(ax, sub, "dataset", methods, {d: chance("fewshot", "top1", d) for d in set(sub["dataset"])})
        ax.set_title(f"{int(k)}-shot", fontsize=9)
        ax.set_ylabel("top-1 (%)")
    for ax in list(axes.flat)[len(shots):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{title}\n{_scale_note(df)}; error bars: std over pretraining seeds; dotted: chance", fontsize=10)
    return fig


def fig_robustness(results: pd.DataFrame) -> Figure:
    """Fig. 5 style: top-1 per distribution-shift set, bars per method."""
    title = "Robustness to distribution shift (Fig. 5 style)"
    df = _select(results, "shift")
    if not len(df):
        return not_run_figure(title)
    agg = _mean_std(df, ["method", "dataset"])
    fig, ax = plt.subplots(figsize=PAGE, constrained_layout=True)
    _grouped_bars(ax, agg, "dataset", _methods(agg), {d: chance("shift", "top1", d) for d in set(agg["dataset"])})
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{title}\n{_scale_note(df)}", fontsize=10)
    return fig


def _curve(ax, df: pd.DataFrame, xcol: str, methods: list[str]) -> None:
    for m in methods:
        d = _mean_std(df[df["method"] == m], [xcol]).sort_values(xcol)
        ax.errorbar(d[xcol].to_numpy(float), d["mean"].to_numpy(float), yerr=d["std"].to_numpy(float), marker="o",
                    capsize=3, color=_color(m), label=_label(m))
    ax.grid(alpha=0.3)


def fig_mask_ratio(results: pd.DataFrame, suite: str = "linear") -> Figure:
    """Fig. 6 style: CAN and SimCLR linear-probe accuracy against the masking rate."""
    title = "Masking rate (Fig. 6 style)"
    df = _select(results, suite)
    df = df[df["method"].isin(["can", "simclr"])].dropna(subset=["mask_ratio"])
    if not len(df):
        return not_run_figure(title)
    fig, ax = plt.subplots(figsize=PAGE, constrained_layout=True)
    _curve(ax, df, "mask_ratio", _methods(df))
    draw_references(ax, reference_values(results, suite))
    ax.set_xlabel("mask ratio")
    ax.set_ylabel(f"{suite} top-1 (%)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{title}\n{_scale_note(df)}", fontsize=10)
    return fig


def hparam_sweep(results: pd.DataFrame, axis: str, suite: str = "linear") -> pd.DataFrame:
    """CAN rows of one Fig. 7 sweep: ``axis`` varies, the other two at CAN defaults (0.03, 0.05, 0.7)."""
    df = _select(results, suite)
    df = df[df["method"] == "can"]
    for other, default in CAN_DEFAULTS.items():
        if other != axis:
            df = df[np.isclose(pd.to_numeric(df[other], errors="coerce"), default)]
    return df.dropna(subset=[axis])


def fig_hparams(results: pd.DataFrame, suite: str = "linear") -> Figure:
    """Fig. 7 style: accuracy against l_nce, sigma_max and lam (others at their defaults)."""
    title = "Loss weights and noise level (Fig. 7 style)"
    sweeps = {a: hparam_sweep(results, a, suite) for a in ("l_nce", "sigma_max", "lam")}
    if not any(len(set(d[a])) > 1 for a, d in sweeps.items()):
        return not_run_figure(title, "needs CAN runs sweeping l_nce, sigma_max or lam")
    fig, axes = plt.subplots(1, 3, figsize=PAGE, constrained_layout=True)
    labels = {"l_nce": "contrastive weight λ_InfoNCE", "sigma_max": "σ_max", "lam": "λ (rec vs denoise)"}
    for ax, (a, d) in zip(axes, sweeps.items()):
        if len(set(d[a])) < 2:
            ax.text(0.5, 0.5, NOT_RUN, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            _curve(ax, d, a, ["can"])
            draw_references(ax, reference_values(results, suite))
            if a == "l_nce" and (d[a] > 0).any():
                ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel(labels[a], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel(f"{suite} top-1 (%)")
    axes[0].legend(fontsize=6)
    alls = pd.concat(list(sweeps.values()))
    fig.suptitle(f"{title}\n{_scale_note(alls)}", fontsize=10)
    return fig


def fig_loss_curves(curves: pd.DataFrame, max_legend: int = 12, title: str = "Training losses per run") -> Figure:
    """Training-loss curves per run: one panel per logged term (loss, infonce, rec, denoise)."""
    terms = [t for t in ("loss", "infonce", "rec", "denoise")
             if curves is not None and len(curves) and t in curves and curves[t].notna().any()]
    if not terms:
        return not_run_figure(title)
    ncols = min(2, len(terms))
    nrows = math.ceil(len(terms) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE[0], 2.6 * nrows + 1.0), squeeze=False,
                             constrained_layout=True)
    runs = list(dict.fromkeys(curves["run_dir"]))
    for ax, t in zip(axes.flat, terms):
        for r in runs:
            d = curves[curves["run_dir"] == r].dropna(subset=[t]).sort_values("step")
            if len(d):
                m = d["method"].iloc[0]
                ax.plot(d["step"], d[t], color=_color(m), alpha=0.7, lw=1,
                        label=str(d["run_name"].iloc[0]) if len(runs) <= max_legend else None)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    if len(runs) <= max_legend:
        axes.flat[0].legend(fontsize=6)
    else:  # one entry per method instead of per run
        for m in _methods(curves):
            axes.flat[0].plot([], [], color=_color(m), label=_label(m))
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{title} ({len(runs)} runs)", fontsize=10)
    return fig


EFFICIENCY_COLUMNS = ["method", "arch", "device", "n", "fwd GFLOP/img", "train GFLOP/img", "img/s",
                      "device-hours", "peak mem GiB"]


def device_of(fp: object) -> str:
    """``8 x NVIDIA H100`` / ``1 x cpu`` from a run's fingerprint; ``?`` when not recorded."""
    if not isinstance(fp, dict) or not fp.get("device_type"):
        return "?"
    name = fp.get("device_name") or fp.get("device_type")
    return f"{fp.get('device_count', 1)} x {name}"


def efficiency_table(pretrain: pd.DataFrame) -> pd.DataFrame:
    """Per (method, arch, device): FLOPs per image (G), img/s, device-hours (GPU-hours on GPUs, CPU-hours on
    CPUs: the device column says which) and peak memory (GiB), means over runs."""
    if pretrain is None or not len(pretrain):
        return pd.DataFrame(columns=EFFICIENCY_COLUMNS)
    df = pretrain.copy()
    for c in ("flops_forward", "flops_train", "img_per_s", "gpu_hours", "device_hours", "peak_mem_bytes"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["hours"] = df["gpu_hours"].where(df["gpu_hours"] > 0, df["device_hours"])
    df["device"] = [device_of(fp) for fp in df.get("fingerprint", [None] * len(df))]
    g = df.groupby(["method", "arch", "device"], dropna=False)
    out = pd.DataFrame({
        "n": g.size(), "fwd GFLOP/img": g["flops_forward"].mean() / 1e9,
        "train GFLOP/img": g["flops_train"].mean() / 1e9, "img/s": g["img_per_s"].mean(),
        "device-hours": g["hours"].mean(), "peak mem GiB": g["peak_mem_bytes"].mean() / 2**30,
    }).reset_index()
    order = {m: i for i, m in enumerate(METHODS)}
    out = out.sort_values(["arch", "method"], key=lambda s: s.map(order).fillna(99) if s.name == "method" else s)
    return out[EFFICIENCY_COLUMNS].reset_index(drop=True)


def fig_efficiency(pretrain: pd.DataFrame) -> Figure:
    """The efficiency table drawn as a matplotlib table."""
    title = "Pretraining efficiency (means over runs)"
    tab = efficiency_table(pretrain)
    if not len(tab):
        return not_run_figure(title)
    cells = [[_label(r["method"]), ARCH_LABELS.get(r["arch"], str(r["arch"])), r["device"], str(int(r["n"]))]
             + [("—" if pd.isna(r[c]) else f"{r[c]:.3g}") for c in EFFICIENCY_COLUMNS[4:]]
             for _, r in tab.iterrows()]
    fig = plt.figure(figsize=(PAGE[0], 0.9 + 0.3 * (len(cells) + 1)))
    ax = fig.add_axes([0.03, 0.03, 0.94, 0.94 - 0.5 / fig.get_figheight()])
    ax.axis("off")
    t = ax.table(cellText=cells, colLabels=EFFICIENCY_COLUMNS, loc="upper center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1, 1.3)
    fig.suptitle(title, fontsize=10, y=0.99)
    return fig
