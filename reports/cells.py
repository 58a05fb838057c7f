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
            (finetune cells are Fig. 1's: table ``fig1``)
table3      row = (method, ``extra.paper_arch`` or arch, ``extra.paper_epochs`` or epochs)  IN-1K
table4      row = method; suite ``pretrain`` infonce/rec -> contrastive/reconstruction_loss  ViT-B 100 ep IN-1K
table5      variant = loss terms present: C if l_nce > 0, A if lam > 0, N if the denoising  ViT-B 100 ep IN-1K
            loss is on (noise_mode full|loss_without_sigma_embedding, sigma_max > 0, lam < 1)
fig6        variant = ``mask_ratio=<m>``                                                 the run's own
fig7        variant = ``l_nce=<a> sigma_max=<s> lam=<l>``                                the run's own
other/none  table = benchmark (or ``unassigned``); the run's own arch, data and epochs      -
==========  ==========================================================================  =================

The cell's *protocol fingerprint* (:func:`protocol_fingerprint`) is everything that can change its number,
flattened to dotted keys so a difference names its key: ``pretrain.<key>`` for every result-affecting key of
the training config (:func:`canbench.fingerprint.train_fingerprint`), ``pretrain.data.identity.*`` for what
the run trained on, ``<suite>.<key>`` for every result-affecting key of the evaluation recipe,
``eval.data.<split>.*`` for what it was evaluated on, ``eval.encoder.*`` and the suite's protocol fields as
``eval.<field>``. Provenance (code version, devices, world size, ...) is recorded but never compared.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from canbench.config import flatten
from canbench.fingerprint import INFORMATIONAL, mismatches
from canbench.methods import loss_term_names
from canbench.reports.collect import normalize_dataset
from canbench.reports.paper import PAPER_KEYS

CELL_KEYS = PAPER_KEYS + ["dataset", "shots"]
POSITION_KEYS = [k for k in CELL_KEYS if k not in ("metric", "dataset", "shots")]  # a run's place in a table
PAPER_TABLES = ("table1", "table2", "table3", "table4", "table5")
FIXED_SETTING = {  # benchmark -> (arch, pretrain_data, epochs) of the paper's experiment
    "table1": ("vit_base", "in1k", "100"), "table4": ("vit_base", "in1k", "100"),
    "table5": ("vit_base", "in1k", "100"),
}
TABLE_DATA = {"table2": "jft300m", "table3": "in1k"}
SUITE_PROTOCOL = {"pretrain": "train_loss"}
PROTOCOL_TABLE = {("table2", "finetune"): "fig1"}  # Table 2's finetuned ViT-Ls are Fig. 1 (right)'s numbers

# Per-run or bookkeeping fields that never decide comparability (beyond canbench's INFORMATIONAL).
PER_RUN_FIELDS = frozenset({"seed", "created", "run_id", "run_dir", "checkpoint", "path", "sha256", "host",
                            "hostname", "time", "wall_time", "elapsed_s", "duration_s", "eval_profile"})
# Sections of an evaluation result's fingerprint that are flattened under their own prefix.
EVAL_SECTION_PREFIX = {"eval_data": "eval.data.", "encoder": "eval.encoder."}


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
    metric = _given(row.get("metric")) or ""
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
    return {"table": PROTOCOL_TABLE.get((str(bench), protocol), str(bench)), "method": fmt_key(row.get("method")),
            "arch": arch, "pretrain_data": data, "epochs": epochs, "protocol": protocol, "metric": metric,
            "variant": _variant(row, bench), "dataset": fmt_key(row.get("dataset")), "shots": fmt_key(row.get("shots"))}


def _plain(fp: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


def pretrain_fingerprint(recipe: dict[str, Any] | None, identity: dict[str, Any] | None) -> dict[str, Any]:
    """``pretrain.<key>`` for each recipe key plus ``pretrain.data.identity.*`` (None: not recorded)."""
    fp: dict[str, Any] = {f"pretrain.{k}": v for k, v in (recipe or {}).items()}
    if isinstance(identity, dict) and identity:
        fp.update(flatten(identity, "pretrain.data.identity."))
    else:
        fp["pretrain.data.identity"] = None
    return fp


def eval_fingerprint(suite: str, result_fp: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result's fingerprint flattened: ``<suite>.<recipe key>``, ``eval.data.*``, ``eval.encoder.*``
    and ``eval.<protocol field>``; provenance and per-run fields left out."""
    fp: dict[str, Any] = {}
    for k, v in result_fp.items():
        if k in INFORMATIONAL or k in PER_RUN_FIELDS:
            continue
        if k == "eval_config" and isinstance(v, dict):
            fp.update(flatten(v, f"{suite}."))
        elif k in EVAL_SECTION_PREFIX and isinstance(v, dict):
            fp.update(flatten(v, EVAL_SECTION_PREFIX[k]))
        elif k == "dataset":
            fp["eval.dataset"] = normalize_dataset(v) if not isinstance(v, list) else [normalize_dataset(x) for x in v]
        elif k == "metric" and isinstance(v, str) and v.startswith("last_epoch"):
            fp["eval.metric"] = "last_epoch"  # "last_epoch (top1_best: best epoch)": the headline is the last epoch
        else:
            fp[f"eval.{k}"] = v
    return fp


def protocol_fingerprint(row: dict) -> dict[str, Any]:
    """Every field deciding comparability of one collected result row (see the module docstring)."""
    recipe = row.get("recipe") if isinstance(row.get("recipe"), dict) else None
    ident = row.get("data_identity") if isinstance(row.get("data_identity"), dict) else None
    fp = pretrain_fingerprint(recipe, ident)
    suite = row.get("suite") or ""
    if suite != "pretrain" and isinstance(row.get("fingerprint"), dict):
        fp.update(eval_fingerprint(suite, row["fingerprint"]))
    return _plain(fp)


CELL_COLUMNS = CELL_KEYS + ["value", "seed", "run_id", "run_dir", "scale", "fp", "fp_sig", "code_version",
                            "higher_is_better", "error", "marker", "provenance"]


def provenance_text(train: dict[str, Any] | None, result_fp: dict[str, Any] | None) -> str:
    """What users ask first when numbers differ (code, libraries, devices, how the batch was split), in a line:
    ``trained: commit 1a2b3c4d (dirty), torch 2.4.0, cuda x8, world 8: 512/device x accum 1 = 4096, 8190
    negatives, step 31200; evaluated: commit 1a2b3c4d, cuda x1``."""
    def env(d: dict[str, Any]) -> list[str]:
        out = []
        if d.get("commit") or d.get("code_version"):
            out.append(f"commit {str(d.get('commit') or d.get('code_version'))[:8]}" + (" (dirty)" if d.get("dirty")
                                                                                       else ""))
        if d.get("torch"):
            out.append(f"torch {d['torch']}")
        if d.get("device_type"):
            out.append(f"{d['device_type']} x{d.get('device_count', '?')}")
        return out

    parts = []
    t = train or {}
    if t:
        tr = env(t)
        if t.get("world_size") is not None:
            tr.append(f"world {t['world_size']}: {t.get('per_device_batch')}/device x accum {t.get('accum_steps')} "
                      f"= {t.get('total_batch')}")
        if t.get("negatives_per_anchor") is not None:
            tr.append(f"{t['negatives_per_anchor']} negatives")
        if t.get("checkpoint_step") is not None:
            tr.append(f"step {t['checkpoint_step']}")
        parts.append("trained: " + ", ".join(tr))
    if result_fp:
        parts.append("evaluated: " + ", ".join(env(result_fp)))
    return "; ".join(p for p in parts if not p.endswith(": "))


def to_cells(results: pd.DataFrame) -> pd.DataFrame:
    """Map every row of :func:`collect` output to its cell; adds ``fp`` (dict) and ``fp_sig`` (str).

    ``error``: why the row's value cannot be used (an unreadable or missing result, a stale one); ``marker``:
    the row stands for every cell of its suite (the result file itself is unreadable or missing)."""
    rows = []
    for rec in results.to_dict("records"):
        key = cell_key(rec)
        fp = protocol_fingerprint(rec)
        err = _given(rec.get("error"))
        rows.append({**key, "value": rec["value"], "seed": rec.get("seed"), "run_id": rec.get("run_id"),
                     "run_dir": rec.get("run_dir"), "scale": fmt_key(_given(rec.get("scale"))), "fp": fp,
                     "fp_sig": json.dumps(fp, sort_keys=True), "code_version": rec.get("code_version"),
                     "higher_is_better": not lower_is_better(key["metric"]), "error": err,
                     "marker": err is not None and _given(rec.get("metric")) is None,
                     "provenance": provenance_text(
                         rec.get("provenance") if isinstance(rec.get("provenance"), dict) else None,
                         rec.get("fingerprint") if rec.get("suite") != "pretrain"
                         and isinstance(rec.get("fingerprint"), dict) else None)})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


AGG_COLUMNS = CELL_KEYS + ["mean", "std", "n", "n_valid", "values", "seeds", "runs", "scales", "fp", "fp_sig",
                           "code_versions", "higher_is_better", "invalid", "stale", "provenance"]


def _problem(row: dict) -> tuple[str, str] | None:
    """('stale' | 'invalid', reason) when a cell row's value cannot be used; None when it can."""
    err = _given(row.get("error"))
    seed = fmt_key(row.get("seed"))
    who = f"{row.get('run_id')} (seed {seed})" if seed else str(row.get("run_id"))
    if err is not None:
        return ("stale" if str(err).startswith("stale") else "invalid"), f"{who}: {err}"
    v = row.get("value")
    if not _isnum(v) or math.isinf(v):
        return "invalid", f"{who}: value {v} is not a finite number"
    return None


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, protocol fingerprint) group: mean, std (ddof 1; NaN for n=1) over the usable values, n (every
    seed, usable or not), n_valid, and the reasons of the unusable ones (``invalid``: NaN, unreadable or missing
    results; ``stale``: results of another checkpoint). Marker rows (:func:`to_cells`) are left out: a check
    looks them up by cell position (:func:`markers_by_position`)."""
    groups: dict[tuple, list[dict]] = {}
    for r in cells.to_dict("records") if len(cells) else []:
        if not r["marker"]:
            groups.setdefault(tuple(r[k] for k in CELL_KEYS) + (r["fp_sig"],), []).append(r)
    out = []
    for _, recs in sorted(groups.items(), key=lambda kv: kv[0]):
        problems = [_problem(r) for r in recs]
        vals = [float(r["value"]) for r, p in zip(recs, problems) if p is None]
        first = recs[0]
        mean = sum(vals) / len(vals) if vals else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
        out.append({**{k: first[k] for k in CELL_KEYS}, "mean": mean, "std": std, "n": len(recs),
                    "n_valid": len(vals), "values": vals, "seeds": sorted({fmt_key(r["seed"]) for r in recs}),
                    "runs": [r["run_id"] for r in recs], "scales": sorted({r["scale"] for r in recs if r["scale"]}),
                    "fp": first["fp"], "fp_sig": first["fp_sig"],
                    "code_versions": sorted({str(r["code_version"]) for r in recs if _given(r["code_version"])}),
                    "higher_is_better": bool(first["higher_is_better"]),
                    "invalid": [p[1] for p in problems if p and p[0] == "invalid"],
                    "stale": [p[1] for p in problems if p and p[0] == "stale"],
                    "provenance": " | ".join(dict.fromkeys(r["provenance"] for r in recs if r["provenance"]))})
    return pd.DataFrame(out, columns=AGG_COLUMNS)


def markers_by_position(cells: pd.DataFrame) -> dict[tuple[str, ...], list[str]]:
    """Reasons of the marker rows (unreadable / missing result files), by table position (:data:`POSITION_KEYS`)."""
    out: dict[tuple[str, ...], list[str]] = {}
    if len(cells):
        for r in cells[cells["marker"].astype(bool)].to_dict("records"):
            out.setdefault(tuple(r[k] for k in POSITION_KEYS), []).append(
                f"{r['run_id']} (seed {fmt_key(r['seed'])}): {r['error']}")
    return out


def describe_mismatches(diff: dict[str, tuple], expected_label: str = "paper", limit: int | None = None) -> str:
    """``{"pretrain.model.arch": ("vit_micro", "vit_base")}`` -> "pretrain.model.arch vit_micro (paper vit_base)".

    When a data identity's ``name`` differs, its other fields (counts, split, ...) follow from that and are left
    out; ``limit`` keeps the first keys and says how many more differ."""
    other_sets = {k[: -len(".name")] for k, (got, want) in diff.items() if k.endswith("identity.name")}
    parts = []
    order = sorted(diff.items(), key=lambda kv: (kv[1][0] is None, 0 if kv[0].startswith("pretrain.") else
                                                 2 if kv[0].startswith("eval.") else 1, kv[0]))
    for k, (got, want) in order:  # values that differ before keys not recorded; training, evaluation, its data
        prefix = k.rsplit(".", 1)[0]
        if prefix in other_sets and not k.endswith(".name"):
            continue
        got_s = "not recorded" if got is None and want is not None else _show(got)
        parts.append(f"{k} {got_s} ({expected_label} {_show(want) if want is not None else 'none'})")
    if limit is not None and len(parts) > limit:
        parts = parts[:limit] + [f"and {len(parts) - limit} more keys (canbench check --json lists them)"]
    return "; ".join(parts)


def _show(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return fmt_key(v) or repr(v)


def best_group(groups: pd.DataFrame | list[dict], expected: dict[str, Any] | None,
               keys: list[str] | None = None) -> tuple[dict, dict[str, tuple]]:
    """Among one cell's fingerprint groups, the one closest to ``expected`` (fewest mismatches) + them.

    ``keys``: the fields compared; None compares every non-informational field of either side.
    """
    best, best_diff = None, None
    for rec in groups.to_dict("records") if isinstance(groups, pd.DataFrame) else groups:
        if expected is None:
            return rec, {}
        use = keys if keys is not None else sorted((set(expected) | set(rec["fp"])) - INFORMATIONAL
                                                   - PER_RUN_FIELDS)
        diff = mismatches(rec["fp"], expected, keys=use)
        if best is None or len(diff) < len(best_diff):
            best, best_diff = rec, diff
    return best, best_diff
