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
from canbench.data.identity import identify
from canbench.fingerprint import mismatches, train_fingerprint
from canbench.io import file_sha256, read_json
from canbench.rundir import RunDir, find_runs

log = logging.getLogger(__name__)

RANDOM_INIT = "random_init"  # the method column of a run whose config says extra.random_init (step-0 encoder)
# Run-level columns every DataFrame of this module starts with.
RUN_COLUMNS = [
    "run_dir", "run_id", "run_name", "state", "method", "arch", "seed", "benchmark", "scale", "grid_name", "preset",
    "variant",
    "pretrain_data", "epochs", "epoch_unit", "max_steps", "batch_size", "img_size", "patch_size",
    "mask_ratio", "l_nce", "lam", "sigma_max", "noise_mode", "paper_arch", "paper_epochs", "grid",
    "recipe", "data_identity", "provenance",
]
EVAL_COLUMNS = RUN_COLUMNS + [
    "suite", "metric", "dataset", "shots", "value", "cell_std", "fingerprint", "checkpoint_step",
    "code_version", "error",
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


def config_meta(cfg: dict) -> dict[str, Any]:
    """The columns a run's config alone decides: identity in its grid, benchmark, recipe and grid axes."""
    rec = RunRecord.from_dict(cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}, strict=False)
    axes = {str(k): v for k, v in (rec.axes or {}).items()}
    return {
        # an untrained encoder is its own arm (the random-init reference), never one of the method's seeds
        "method": RANDOM_INIT if rec.random_init else _get(cfg, "method.name"),
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
        "recipe": _jsonable(train_fingerprint(cfg)),
    }


def run_meta(run: RunDir, cfg: dict, status: dict | None, summary: dict | None) -> dict[str, Any]:
    """Run-level columns (identity, benchmark, grid axes, recipe, data identity, provenance) of one run."""
    rec = RunRecord.from_dict(cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}, strict=False)
    return {
        "run_dir": str(run.path),
        "run_id": (summary or {}).get("run_id") or rec.run_id or rec.run_name or run.name,
        "run_name": rec.run_name or run.name,
        "state": (status or {}).get("state", "unknown"),
        **config_meta(cfg),
        "data_identity": _jsonable(_data_identity(cfg, summary)),
        "provenance": _jsonable((summary or {}).get("provenance") or {}),
    }


def _data_identity(cfg: dict, summary: dict | None) -> Any:
    """What the run trained on: summary.json's identity, else (generated sets) the config's; None: not recorded."""
    ident = (summary or {}).get("data_identity")
    if isinstance(ident, dict):
        return ident
    dataset = _get(cfg, "data.dataset")
    if isinstance(dataset, str) and dataset.startswith("builtin"):
        return identify(dataset, None, _get(cfg, "data.split", "train"),
                        builtin_version=_get(cfg, "data.builtin_version"), size=_get(cfg, "data.builtin_size"))
    if dataset in ("digits", "jft"):
        return identify(dataset, None, _get(cfg, "data.split", "train"))
    return None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha(path: Path) -> str | None:
    """sha256 of a checkpoint file, once per (path, size, mtime) in this process; None when it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def run_checkpoint_sha(run: RunDir, summary: dict | None) -> str | None:
    """The run's current checkpoint: summary.json's ``checkpoint_sha256``, else the file's own hash."""
    sha = (summary or {}).get("checkpoint_sha256")
    return sha if isinstance(sha, str) else _sha(run.last_checkpoint)


def stale_reason(run: RunDir, res: dict, suite: str, run_sha: str | None) -> str | None:
    """Why an evaluation result does not belong to the run's current checkpoint (None when it does)."""
    made_from = (res.get("checkpoint") or {}).get("sha256")
    if suite == "shift" and run.finetuned_path.is_file():
        current = _sha(run.finetuned_path)
        if made_from and current and made_from != current:
            return (f"stale: made from the classifier {made_from[:12]}, the run's finetune/finetuned.pt is "
                    f"{current[:12]}; rerun `canbench evaluate shift --checkpoint {run.path}`")
        source = _read(run.finetuned_path.parent / "source.json", "json") or {}
        pre = (source.get("pretrained") or {}).get("sha256")
        if run_sha and pre and pre != run_sha:
            return (f"stale: the classifier was finetuned from checkpoint {pre[:12]}, the run's checkpoint is "
                    f"{run_sha[:12]}; rerun `canbench evaluate finetune shift --checkpoint {run.path} --force`")
        return None
    if run_sha and made_from and made_from != run_sha:
        return (f"stale: made from checkpoint {made_from[:12]}, the run's checkpoint is now {run_sha[:12]}; "
                f"rerun `canbench evaluate {suite} --checkpoint {run.path}`")
    return None


def _jsonable(obj: Any) -> Any:
    """A plain JSON round-trip copy (tuples -> lists), so values compare equal after CSV storage."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


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
                    if mkey in ("dataset", "set", "shots", "mean", "std", "seeds", "actual_shots"):
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
        run_sha = run_checkpoint_sha(run, summary)
        seen = set()
        for path in run.result_paths():
            seen.add(path.stem)
            res = _read(path, "json")
            metrics = res.get("metrics") if res is not None else None
            if not isinstance(metrics, dict):  # torn or unreadable: a failure of its cells, never a smaller n
                rows.append(_marker(meta, path.stem, f"unreadable result {path}"))
                continue
            fp = res.get("fingerprint") if isinstance(res.get("fingerprint"), dict) else {}
            ckpt = res.get("checkpoint") if isinstance(res.get("checkpoint"), dict) else {}
            suite = res.get("suite") or path.stem
            stale = stale_reason(run, res, suite, run_sha)
            cells = _metric_rows(metrics)
            for name, why in (metrics.get("errors") or {}).items():  # a data set whose evaluation failed
                for shots in fp.get("shots") or [None]:
                    cells.append({"metric": "top1", "dataset": name, "shots": shots, "value": math.nan,
                                  "cell_std": math.nan, "error": f"{suite} failed on {name}: {why}"})
            for cell in cells:
                rows.append({**meta, "suite": suite, "fingerprint": _jsonable(fp), "checkpoint_step": ckpt.get("step"),
                             "code_version": fp.get("code_version"), "error": stale, **cell})
        suites = RunRecord.from_dict(cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {},
                                     strict=False).suites or []
        state = (status or {}).get("state")
        if state in ("done", "failed"):
            for suite in suites:
                if suite in seen:
                    continue
                if state == "done":  # the run finished its suites, yet this result is gone
                    rows.append(_marker(meta, suite, f"missing result {run.result_path(suite)}"))
                else:
                    rows.append(_marker(meta, suite, f"the run failed before this result: "
                                                     f"{(status or {}).get('reason') or 'no reason recorded'}"))
        if include_pretrain and summary is not None:
            final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
            fp = summary.get("fingerprint") if isinstance(summary.get("fingerprint"), dict) else {}
            for key in ("loss", "infonce", "rec", "denoise"):
                value = _num(final.get(key))
                if not math.isnan(value):
                    rows.append({**meta, "suite": "pretrain", "metric": key, "dataset": None, "shots": None,
                                 "value": value, "cell_std": math.nan, "fingerprint": _jsonable(fp),
                                 "checkpoint_step": summary.get("steps"),
                                 "code_version": fp.get("code_version"), "error": None})
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def _marker(meta: dict[str, Any], suite: str, error: str) -> dict[str, Any]:
    """A row that stands for every cell of ``suite`` of this run: its result could not be read."""
    log.warning("%s: %s", meta["run_dir"], error)
    return {**meta, "suite": suite, "metric": None, "dataset": None, "shots": None, "value": math.nan,
            "cell_std": math.nan, "fingerprint": {}, "checkpoint_step": None, "code_version": None, "error": error}


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
