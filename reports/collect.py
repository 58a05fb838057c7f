"""Read a results root (run folders at any depth) into pandas DataFrames.

A run folder is any folder holding ``config.yaml`` (:func:`canbench.rundir.find_runs`); its files are read
through :class:`canbench.rundir.RunDir` and its ``extra`` section as a :class:`canbench.config.RunRecord`.
Partial runs are normal (a job may still be running, or have crashed mid-write): a missing or torn file is
skipped with a logged warning and never stops the collection.

- :func:`collect` — one row per (run, suite, metric cell) of ``eval/<suite>.json`` (plus the
  pretraining summary's final losses as suite ``pretrain``).
- :func:`collect_pretrain` — one row per run with ``summary.json`` (costs and final losses).
- :func:`loss_curves` — one row per logged step of ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from canbench.config import RunRecord, flatten
from canbench.fingerprint import mismatches
from canbench.io import read_json
from canbench.rundir import RunDir, find_runs

log = logging.getLogger(__name__)

# Run-level columns every DataFrame of this module starts with.
RUN_COLUMNS = [
    "run_dir", "run_id", "run_name", "state", "method", "arch", "seed", "benchmark", "scale", "grid_name", "preset",
    "variant",
    "pretrain_data", "epochs", "epoch_unit", "max_steps", "batch_size", "img_size", "patch_size",
    "mask_ratio", "l_nce", "lam", "sigma_max", "noise_mode", "paper_arch", "paper_epochs", "grid",
    "protocol",
]
EVAL_COLUMNS = RUN_COLUMNS + [
    "suite", "metric", "dataset", "shots", "value", "cell_std", "fingerprint", "checkpoint_step",
    "code_version",
]
PRETRAIN_COLUMNS = RUN_COLUMNS + [
    "steps", "final_loss", "final_infonce", "final_rec", "final_denoise", "flops_forward",
    "flops_train", "img_per_s", "gpu_hours", "device_hours", "peak_mem_bytes", "fingerprint",
    "code_version",
]
CURVE_COLUMNS = ["run_dir", "run_id", "run_name", "method", "arch", "seed", "benchmark", "variant", "step", "epoch",
                 "loss", "infonce", "rec", "denoise", "lr", "img_per_s"]

# Names a dataset goes by -> the short names the paper tables use.
DATASET_ALIASES = {
    "imagenet": "in1k", "imagenet1k": "in1k", "imagenet-1k": "in1k", "imagenet_1k": "in1k", "in1k": "in1k",
    "in-1k": "in1k", "ilsvrc2012": "in1k", "jft": "jft300m", "jft300m": "jft300m", "jft-300m": "jft300m",
}


def normalize_dataset(name: Any) -> Any:
    """Map dataset spellings (``imagenet``, ``IN-1K``...) to the paper's short names; others unchanged."""
    if not isinstance(name, str):
        return name
    return DATASET_ALIASES.get(name.strip().lower(), name)


def _read(path: Path, kind: str) -> Any:
    """Parse a JSON or YAML file; None (with a warning) when it is missing, torn or not a mapping."""
    try:
        if kind == "yaml":
            with open(path) as f:
                obj = yaml.safe_load(f)
        else:
            obj = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, yaml.YAMLError) as e:  # JSONDecodeError is a ValueError
        log.warning("skipping unreadable %s (%s: %s)", path, type(e).__name__, str(e).splitlines()[0])
        return None
    if not isinstance(obj, dict):
        log.warning("skipping %s: expected a mapping, got %s", path, type(obj).__name__)
        return None
    return obj


def _num(x: Any) -> float:
    """A finite-or-NaN float from a JSON value (None and non-numbers become NaN)."""
    if isinstance(x, bool) or x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _get(d: dict, dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


PRESET_ARCH = (("vit_l", "vit_large"), ("vit_b", "vit_base"))  # preset alias prefix -> the paper's arch


def _paper_arch(axes: dict) -> str | None:
    """The architecture of the paper row a run stands for: its nominal ``model.arch`` axis, else its preset axis."""
    if axes.get("model.arch"):
        return str(axes["model.arch"])
    preset = axes.get("preset")
    if isinstance(preset, str):
        for prefix, arch in PRESET_ARCH:
            if preset.startswith(prefix):
                return arch
    return None


def run_meta(run: RunDir, cfg: dict, status: dict | None, summary: dict | None) -> dict[str, Any]:
    """Run-level columns (identity, benchmark, grid axes) from a run's config, status and summary."""
    rec = RunRecord.from_dict(cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}, strict=False)
    axes = {str(k): v for k, v in (rec.axes or {}).items()}
    return {
        "run_dir": str(run.path),
        "run_id": (summary or {}).get("run_id") or rec.run_id or rec.run_name or run.name,
        "run_name": rec.run_name or run.name,
        "state": (status or {}).get("state", "unknown"),
        "method": _get(cfg, "method.name"),
        "arch": _get(cfg, "model.arch"),
        "seed": _get(cfg, "train.seed"),
        "benchmark": rec.benchmark,
        "scale": rec.scale,
        "grid_name": rec.grid,
        "preset": rec.preset,
        "variant": axes.get("variant"),
        "pretrain_data": normalize_dataset(rec.pretrain_data or _get(cfg, "data.dataset")),
        "epochs": _num(_get(cfg, "optim.epochs")),
        "epoch_unit": _get(cfg, "optim.epoch_unit", "dataset"),
        "max_steps": _get(cfg, "optim.max_steps"),
        "batch_size": _get(cfg, "optim.batch_size"),
        "img_size": _get(cfg, "model.img_size"),
        "patch_size": _get(cfg, "model.patch_size"),
        "mask_ratio": _num(_get(cfg, "method.mask_ratio")),
        "l_nce": _num(_get(cfg, "method.l_nce")),
        "lam": _num(_get(cfg, "method.lam")),
        "sigma_max": _num(_get(cfg, "method.sigma_max")),
        "noise_mode": _get(cfg, "method.noise_mode"),
        "paper_arch": _paper_arch(axes),
        "paper_epochs": axes.get("optim.epochs"),
        "grid": axes,
        "protocol": _pretrain_protocol(cfg, rec),
    }


def _jsonable(obj: Any) -> Any:
    """A plain JSON round-trip copy (tuples -> lists), so values compare equal after CSV storage."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _pretrain_protocol(cfg: dict, rec: RunRecord | None = None) -> dict[str, Any]:
    """Pretraining fields that decide comparability (``pretrain.*``): scale, data, model, method."""
    if rec is None:
        rec = RunRecord.from_dict(cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}, strict=False)
    fields = {
        "pretrain.arch": _get(cfg, "model.arch"),
        "pretrain.data": normalize_dataset(rec.pretrain_data or _get(cfg, "data.dataset")),
        "pretrain.epochs": _get(cfg, "optim.epochs"),
        "pretrain.epoch_unit": _get(cfg, "optim.epoch_unit", "dataset"),
        "pretrain.max_steps": _get(cfg, "optim.max_steps"),
        "pretrain.batch_size": _get(cfg, "optim.batch_size"),
        "pretrain.img_size": _get(cfg, "model.img_size"),
        "pretrain.patch_size": _get(cfg, "model.patch_size"),
        "pretrain.pool": _get(cfg, "model.pool"),
        "pretrain.augment": _get(cfg, "data.augment"),
        "pretrain.mask_ratio": _get(cfg, "method.mask_ratio"),
        "pretrain.l_nce": _get(cfg, "method.l_nce"),
        "pretrain.lam": _get(cfg, "method.lam"),
        "pretrain.sigma_max": _get(cfg, "method.sigma_max"),
        "pretrain.noise_mode": _get(cfg, "method.noise_mode"),
        "pretrain.norm_pix_loss": _get(cfg, "method.norm_pix_loss"),
    }
    if fields["pretrain.data"] == "builtin":  # runs made before versions were recorded: "unrecorded"
        fields["pretrain.data_version"] = _get(cfg, "data.builtin_version") or "unrecorded"
    return _jsonable(fields)


def iter_runs(root: str | os.PathLike) -> Iterator[tuple[RunDir, dict, dict | None, dict | None]]:
    """(run, config, status, summary) of every run with a readable config (others warned, skipped).

    Superseded grid runs are skipped with a warning: when one folder holds several runs of the same
    grid run name (``extra.run_name``) with different run ids, i.e. the same method, axes and seed
    launched again with another resolved config (a changed default, an added ``--set``), only the one
    with the latest activity is reported. Reporting both would count one seed twice.
    """
    runs = []
    for run in find_runs(root):
        cfg = _read(run.config_path, "yaml")
        if cfg is None:
            log.warning("skipping run %s: config.yaml is missing or unreadable", run.path)
            continue
        if not isinstance(cfg.get("method"), dict) or "name" not in cfg["method"]:
            log.warning("skipping run %s: config.yaml has no method.name", run.path)
            continue
        runs.append((run, cfg))
    skip = _superseded(runs)
    for run, cfg in runs:
        if run not in skip:
            yield run, cfg, _read(run.status_path, "json"), _read(run.summary_path, "json")


_WARNED_SUPERSEDED: set[tuple[str, str]] = set()


def _superseded(runs: list[tuple[RunDir, dict]]) -> set[RunDir]:
    """Run folders that a newer run of the same grid run name in the same folder replaces (warned)."""
    groups: dict[tuple[Path, str], list[tuple[RunDir, dict, RunRecord]]] = {}
    for run, cfg in runs:
        rec = RunRecord.from_dict(cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}, strict=False)
        if rec.run_name and rec.run_id:
            groups.setdefault((run.path.parent, rec.run_name), []).append((run, cfg, rec))
    skip: set[RunDir] = set()
    for (parent, name), members in groups.items():
        if len({m[2].run_id for m in members}) < 2:
            continue
        members.sort(key=lambda m: (m[0].last_activity(), str(m[0].path)))
        keep, keep_cfg, _ = members[-1]
        for run, cfg, _ in members[:-1]:
            skip.add(run)
            if (str(run.path), str(keep.path)) in _WARNED_SUPERSEDED:  # once per process, not per collect()
                continue
            _WARNED_SUPERSEDED.add((str(run.path), str(keep.path)))
            diff = mismatches(*(flatten({k: v for k, v in c.items() if k != "extra"}) for c in (cfg, keep_cfg)))
            log.warning("%s: %d runs named %r; reporting the latest, %s, and skipping %s (config differs in: %s). "
                        "Move or delete the older folder to silence this.", parent, len(members), name,
                        keep.name, run.name, ", ".join(diff) or "extra only")
    return skip


# Bookkeeping numbers an eval result may carry beside its metrics: never compared (wall-clock time
# would make every check flaky; sizes and schedules are protocol, recorded in the fingerprint).
NOT_METRICS = frozenset({"elapsed_s", "n_train", "n_val", "n_test", "steps", "epochs_run", "peak_lr", "best_epoch",
                         "num_classes"})


def _metric_rows(metrics: dict) -> list[dict[str, Any]]:
    """Flatten an eval ``metrics`` mapping into (metric, dataset, shots, value, cell_std) rows."""
    rows = []
    for key, val in metrics.items():
        if key in NOT_METRICS:
            continue
        if key == "results" and isinstance(val, list):
            for item in val:
                if not isinstance(item, dict):
                    continue
                dataset = item.get("dataset", item.get("set"))
                shots = item.get("shots")
                if "mean" in item:
                    rows.append({"metric": "top1", "dataset": dataset, "shots": shots,
                                 "value": _num(item["mean"]), "cell_std": _num(item.get("std"))})
                for mkey, mval in item.items():
                    if mkey in ("dataset", "set", "shots", "mean", "std", "seeds"):
                        continue
                    if isinstance(mval, (int, float)) and not isinstance(mval, bool):
                        rows.append({"metric": mkey, "dataset": dataset, "shots": shots,
                                     "value": float(mval), "cell_std": math.nan})
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            rows.append({"metric": key, "dataset": None, "shots": None, "value": float(val),
                         "cell_std": math.nan})
    return rows


def collect(root: str | os.PathLike, include_pretrain: bool = True) -> pd.DataFrame:
    """One row per (run, suite, metric cell) under ``root``; see ``EVAL_COLUMNS`` for the columns.

    ``include_pretrain`` adds the summary's final losses as suite ``pretrain`` (metrics ``loss``,
    ``infonce``, ``rec``, ``denoise``) so one frame feeds tables, claims and checks.
    """
    rows: list[dict[str, Any]] = []
    for run, cfg, status, summary in iter_runs(root):
        meta = run_meta(run, cfg, status, summary)
        for path in run.result_paths():
            res = _read(path, "json")
            if res is None:
                continue
            metrics = res.get("metrics")
            if not isinstance(metrics, dict):
                log.warning("skipping %s: no 'metrics' mapping", path)
                continue
            fp = res.get("fingerprint") if isinstance(res.get("fingerprint"), dict) else {}
            ckpt = res.get("checkpoint") if isinstance(res.get("checkpoint"), dict) else {}
            suite = res.get("suite") or path.stem
            for cell in _metric_rows(metrics):
                rows.append({**meta, "suite": suite, **cell, "fingerprint": _jsonable(fp),
                             "checkpoint_step": ckpt.get("step"), "code_version": fp.get("code_version")})
        if include_pretrain and summary is not None:
            final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
            fp = summary.get("fingerprint") if isinstance(summary.get("fingerprint"), dict) else {}
            for key in ("loss", "infonce", "rec", "denoise"):
                value = _num(final.get(key))
                if not math.isnan(value):
                    rows.append({**meta, "suite": "pretrain", "metric": key, "dataset": None, "shots": None,
                                 "value": value, "cell_std": math.nan, "fingerprint": _jsonable(fp),
                                 "checkpoint_step": summary.get("steps"),
                                 "code_version": fp.get("code_version")})
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def collect_pretrain(root: str | os.PathLike) -> pd.DataFrame:
    """One row per run with a readable ``summary.json``: final losses, FLOPs, throughput, hours, memory."""
    rows: list[dict[str, Any]] = []
    for run, cfg, status, summary in iter_runs(root):
        if summary is None:
            state = (status or {}).get("state")
            if state == "done":
                log.warning("run %s is done but has no readable summary.json; skipped", run.path)
            continue
        meta = run_meta(run, cfg, status, summary)
        final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
        flops = summary.get("flops_per_image") if isinstance(summary.get("flops_per_image"), dict) else {}
        fp = summary.get("fingerprint") if isinstance(summary.get("fingerprint"), dict) else {}
        rows.append({
            **meta,
            "steps": summary.get("steps"),
            "final_loss": _num(final.get("loss")),
            "final_infonce": _num(final.get("infonce")),
            "final_rec": _num(final.get("rec")),
            "final_denoise": _num(final.get("denoise")),
            "flops_forward": _num(flops.get("forward")),
            "flops_train": _num(flops.get("train")),
            "img_per_s": _num(summary.get("img_per_s")),
            "gpu_hours": _num(summary.get("gpu_hours")),
            "device_hours": _num(summary.get("device_hours")),
            "peak_mem_bytes": _num(summary.get("peak_mem_bytes")),
            "fingerprint": _jsonable(fp),
            "code_version": fp.get("code_version"),
        })
    return pd.DataFrame(rows, columns=PRETRAIN_COLUMNS)


def loss_curves(root: str | os.PathLike) -> pd.DataFrame:
    """One row per logged step of every run's ``metrics.jsonl`` (torn lines skipped)."""
    frames = []
    for run, cfg, status, summary in iter_runs(root):
        lines = [r for r in run.read_metrics() if "step" in r]
        if not lines:
            continue
        meta = run_meta(run, cfg, status, summary)
        df = pd.DataFrame(lines)
        for col in CURVE_COLUMNS:
            if col in meta:
                df[col] = meta[col]
            elif col not in df:
                df[col] = math.nan
        frames.append(df[CURVE_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    for col in ("step", "epoch", "loss", "infonce", "rec", "denoise", "lr", "img_per_s"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out
