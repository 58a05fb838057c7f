"""From collected results to table cells: the run -> cell mapping and the protocol fingerprints.

A *cell* is one number of a table, keyed by :data:`CELL_KEYS` (the paper CSV's keys plus the
few-shot/shift ``dataset`` and ``shots``); every key field is a string so cells join cleanly with
``paper_numbers.csv`` and baseline CSVs.

Mapping (from each run's ``config.extra.benchmark``; ``extra.variant`` overrides the variant):

==========  ==========================================================================  =================
benchmark   cell position                                                               setting fixed to
==========  ==========================================================================  =================
table1      variant = ``method.noise_mode`` (none|augment_only|loss_without_sigma_...|full)  ViT-B 100 ep IN-1K
table2      row = (method, ``extra.paper_arch`` or arch, ``extra.paper_epochs`` or epochs)  JFT-300M
table3      row = (method, ``extra.paper_arch`` or arch, ``extra.paper_epochs`` or epochs)  IN-1K
table4      row = method; suite ``pretrain`` infonce/rec -> contrastive/reconstruction_loss  ViT-B 100 ep IN-1K
table5      variant = loss terms present: C if l_nce > 0, A if lam > 0, N if the denoising  ViT-B 100 ep IN-1K
            loss is on (noise_mode full|loss_without_sigma_embedding, sigma_max > 0, lam < 1)
fig6        variant = ``mask_ratio=<m>``                                                 the run's own
fig7        variant = ``l_nce=<a> sigma_max=<s> lam=<l>``                                the run's own
other/none  table = benchmark (or ``unassigned``); the run's own arch, data and epochs      -
==========  ==========================================================================  =================

The run's actual scale and the evaluation's fingerprint go into the cell's *protocol fingerprint*
(``pretrain.*`` from config.yaml, ``eval.*``/``train.*`` from the result file); a cell is compared
with the paper only when that fingerprint agrees with :func:`paper_protocol` on every field.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from canbench.fingerprint import INFORMATIONAL, mismatches
from canbench.methods import METHODS, loss_term_names
from canbench.reports.collect import normalize_dataset
from canbench.reports.paper import PAPER_KEYS

CELL_KEYS = PAPER_KEYS + ["dataset", "shots"]
PAPER_TABLES = ("table1", "table2", "table3", "table4", "table5")
FIXED_SETTING = {  # benchmark -> (arch, pretrain_data, epochs) of the paper's experiment
    "table1": ("vit_base", "in1k", "100"), "table4": ("vit_base", "in1k", "100"),
    "table5": ("vit_base", "in1k", "100"),
}
TABLE_DATA = {"table2": "jft300m", "table3": "in1k"}
SUITE_PROTOCOL = {"pretrain": "train_loss"}

# Per-run or bookkeeping fields that never decide comparability (beyond canbench's INFORMATIONAL).
PER_RUN_FIELDS = frozenset({"seed", "created", "run_id", "run_dir", "checkpoint", "path", "sha256", "host",
                            "hostname", "time", "wall_time", "elapsed_s", "duration_s"})

PAPER_PRETRAIN = {"pretrain.img_size": 224, "pretrain.patch_size": 16, "pretrain.batch_size": 4096,
                  "pretrain.max_steps": None, "pretrain.pool": "avg"}
PAPER_EVAL = {  # docs/protocols.md §3 (paper Tables 10-11); max_steps None: no step cap
    "linear": {"eval.pooling": "avg", "eval.head_bn": True, "eval.epochs": 100, "eval.metric": "last_epoch",
               "eval.mode": "augmented", "eval.dataset": "in1k", "eval.img_size": 224, "eval.max_steps": None},
    "finetune": {"eval.pooling": "avg+fc_norm", "eval.epochs": 100, "eval.metric": "last_epoch",
                 "eval.dataset": "in1k", "eval.img_size": 224, "eval.max_steps": None},
    "train_loss": {},
}


def lower_is_better(metric: str) -> bool:
    """Losses are better lower: ``loss``, every registered method's loss-term names, and anything named ``*loss*``."""
    return metric == "loss" or "loss" in metric or metric in loss_term_names() \
        or metric in set(loss_term_names().values())


def fmt_key(x: Any) -> str:
    """A key field as a string: '' for missing, whole numbers without '.0', others with %g."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, float)):
        return str(int(x)) if float(x).is_integer() else f"{x:g}"
    return str(x)


def _given(x: Any) -> Any:
    """``x``, or None when it is missing: None, NaN (pandas' missing marker) or ''."""
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)) or (isinstance(x, str) and not x):
        return None
    return x


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def ablation_label(l_nce: float, lam: float, sigma_max: float, noise_mode: str | None) -> str:
    """Table 5 label: the loss terms a CAN config keeps (C contrastive, A reconstruction, N denoising)."""
    c = _isnum(l_nce) and l_nce > 0
    a = _isnum(lam) and lam > 0 and not (_isnum(l_nce) and l_nce >= 1)
    n = (noise_mode in ("full", "loss_without_sigma_embedding") and _isnum(sigma_max) and sigma_max > 0
         and _isnum(lam) and lam < 1 and not (_isnum(l_nce) and l_nce >= 1))
    return "".join(t for t, on in zip("CAN", (c, a, n)) if on) or "none"


def _variant(row: dict, bench: str) -> str:
    if _given(row.get("variant")) is not None:
        return str(row["variant"])
    if bench == "table1":
        return fmt_key(row.get("noise_mode"))
    if bench == "table5":
        return ablation_label(row.get("l_nce"), row.get("lam"), row.get("sigma_max"), row.get("noise_mode"))
    if bench == "fig6":
        return f"mask_ratio={fmt_key(row.get('mask_ratio'))}"
    if bench == "fig7":
        return (f"l_nce={fmt_key(row.get('l_nce'))} sigma_max={fmt_key(row.get('sigma_max'))} "
                f"lam={fmt_key(row.get('lam'))}")
    return ""


def cell_key(row: dict) -> dict[str, str]:
    """The cell (CELL_KEYS -> str) one collected result row belongs to, per the mapping above."""
    bench = _given(row.get("benchmark")) or "unassigned"
    suite = row.get("suite") or ""
    protocol = SUITE_PROTOCOL.get(suite, suite)
    metric = row.get("metric") or ""
    if protocol == "train_loss":
        metric = loss_term_names().get(metric, metric)
    if bench in FIXED_SETTING:
        arch, data, epochs = FIXED_SETTING[bench]
    elif bench in TABLE_DATA:
        arch = fmt_key(_given(row.get("paper_arch")) or row.get("arch"))
        paper_epochs = _given(row.get("paper_epochs"))
        epochs = fmt_key(paper_epochs if paper_epochs is not None else row.get("epochs"))
        data = TABLE_DATA[bench]
    else:
        arch, data, epochs = fmt_key(row.get("arch")), fmt_key(row.get("pretrain_data")), fmt_key(row.get("epochs"))
    return {"table": str(bench), "method": fmt_key(row.get("method")), "arch": arch, "pretrain_data": data,
            "epochs": epochs, "protocol": protocol, "metric": metric, "variant": _variant(row, bench),
            "dataset": fmt_key(row.get("dataset")), "shots": fmt_key(row.get("shots"))}


def protocol_fingerprint(row: dict) -> dict[str, Any]:
    """The fields deciding comparability of one result: ``pretrain.*`` plus the result's fingerprint."""
    fp = dict(row.get("protocol") or {})
    prefix = "train." if row.get("suite") == "pretrain" else "eval."
    for k, v in (row.get("fingerprint") or {}).items():
        if k in INFORMATIONAL or k in PER_RUN_FIELDS:
            continue
        if k == "dataset":
            v = normalize_dataset(v)
        elif k == "metric" and isinstance(v, str) and v.startswith("last_epoch"):
            v = "last_epoch"  # "last_epoch (top1_best: best epoch)": the headline number is the last epoch
        fp[prefix + k] = v
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


def to_cells(results: pd.DataFrame) -> pd.DataFrame:
    """Map every row of :func:`collect` output to its cell; adds ``fp`` (dict) and ``fp_sig`` (str)."""
    cols = CELL_KEYS + ["value", "seed", "run_id", "run_dir", "fp", "fp_sig", "code_version", "higher_is_better"]
    rows = []
    for rec in results.to_dict("records"):
        key = cell_key(rec)
        fp = protocol_fingerprint(rec)
        rows.append({**key, "value": rec["value"], "seed": rec.get("seed"), "run_id": rec.get("run_id"),
                     "run_dir": rec.get("run_dir"), "fp": fp, "fp_sig": json.dumps(fp, sort_keys=True),
                     "code_version": rec.get("code_version"),
                     "higher_is_better": not lower_is_better(key["metric"])})
    return pd.DataFrame(rows, columns=cols)


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1; NaN for n=1), n and seeds per (cell, protocol fingerprint) group."""
    cols = CELL_KEYS + ["mean", "std", "n", "seeds", "runs", "fp", "fp_sig", "code_versions", "higher_is_better"]
    out = []
    if len(cells):
        for _, g in cells.groupby(CELL_KEYS + ["fp_sig"], sort=True, dropna=False):
            vals = pd.to_numeric(g["value"], errors="coerce").dropna()
            first = g.iloc[0]
            out.append({**{k: first[k] for k in CELL_KEYS}, "mean": float(vals.mean()) if len(vals) else math.nan,
                        "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan, "n": int(len(vals)),
                        "seeds": sorted({fmt_key(s) for s in g["seed"]}), "runs": list(g["run_id"]),
                        "fp": first["fp"], "fp_sig": first["fp_sig"],
                        "code_versions": sorted({str(c) for c in g["code_version"] if c}),
                        "higher_is_better": bool(first["higher_is_better"])})
    return pd.DataFrame(out, columns=cols)


def paper_protocol(key: dict[str, str]) -> dict[str, Any]:
    """The protocol fingerprint a reproduction of paper cell ``key`` must have to be compared with it."""
    fp: dict[str, Any] = {"pretrain.arch": key["arch"], "pretrain.data": key["pretrain_data"], **PAPER_PRETRAIN}
    if key["epochs"]:
        fp["pretrain.epochs"] = int(key["epochs"])
    if key["pretrain_data"] == "jft300m":  # "ImageNet-equivalent epochs" (Sec. 4.1)
        fp["pretrain.epoch_unit"] = "imagenet"
    if key["table"] == "table4":
        fp["pretrain.mask_ratio"] = 0.5  # "All methods use 50% masking for fair comparison"
    elif key["table"] in ("table2", "table3", "fig1") and key["method"] in METHODS:
        fp["pretrain.mask_ratio"] = METHODS[key["method"]].defaults["mask_ratio"]  # the method's own default
    fp.update(PAPER_EVAL.get(key["protocol"], {}))
    return fp


def describe_mismatches(diff: dict[str, tuple], expected_label: str = "paper") -> str:
    """``{"pretrain.arch": ("vit_micro", "vit_base")}`` -> "pretrain.arch vit_micro (paper vit_base)"."""
    parts = []
    for k, (got, want) in sorted(diff.items()):
        got_s = "not recorded" if got is None and want is not None else fmt_key(got) or repr(got)
        parts.append(f"{k} {got_s} ({expected_label} {fmt_key(want) if want is not None else 'none'})")
    return "; ".join(parts)


def best_group(groups: pd.DataFrame, expected: dict[str, Any] | None,
               keys: list[str] | None = None) -> tuple[dict, dict[str, tuple]]:
    """Among one cell's fingerprint groups, the one closest to ``expected`` (fewest mismatches) + them.

    ``keys``: the fields compared; None compares every non-informational field of either side.
    """
    best, best_diff = None, None
    for rec in groups.to_dict("records"):
        if expected is None:
            return rec, {}
        use = keys if keys is not None else sorted((set(expected) | set(rec["fp"])) - INFORMATIONAL
                                                   - PER_RUN_FIELDS)
        diff = mismatches(rec["fp"], expected, keys=use)
        if best is None or len(diff) < len(best_diff):
            best, best_diff = rec, diff
    return best, best_diff
