"""The run store: one folder per run under a grid root, plain files only (no database).

``<root>/<name>-<id>/`` holds ``config.yaml`` (the resolved config, written once), ``status.json``
(state, job ids, log paths; written atomically), ``logs/`` (links to the scheduler's log files),
and whatever the engine and the evaluation suites write (``metrics.jsonl``, ``checkpoints/``,
``summary.json``, ``eval/``). The aggregate view is a pandas table built from the folders.

Concurrency: ``grid_lock(root)`` (an ``fcntl`` lock on ``<root>/.grid.lock``) is held while a
command decides what to submit and submits it, so two racing ``grid submit`` never double-submit.
Status updates made by this package go through :meth:`canbench.rundir.RunDir.update_status`, which holds a
per-run lock for its read-modify-write (the trainer's own status writes are atomic replaces).

Shared training (a store keyed by the training config): runs of different grids whose resolved configs differ
only in their run record (``extra``: grid, name, axes, suites, evaluation settings) train the same model, so
they are trained once. :func:`training_key` hashes the config without ``extra``; ``<store>/.trained/<key>.json``
names the run folder that trained it (``<key>.lock`` is held while it trains); :func:`adopt_training` gives
another run folder that training (checkpoints and encoder hard-linked, metrics copied, a summary with its own
run id and ``trained_in``; results of the suites both run, when both ask for the same evaluation settings, for
the evaluation runner to reuse if still up to date), after which the folder is an ordinary run folder: its own
config, status and evaluation results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from canbench.config import ConfigError
from canbench.io import canonical_json, file_lock, read_json, try_lock, write_json
from canbench.rundir import STATES, RunDir, check_path_part

LOCK_NAME = ".grid.lock"
TRAINED_DIR = ".trained"  # <store>/.trained/<training key>.json (+ .lock): which folder trained that config


def default_root(grid_name: str, scale: str) -> Path:
    """``runs/<grid name>/<scale>`` (relative to the working directory); both must be plain folder names."""
    return Path("runs") / check_path_part(grid_name, "grid name") / check_path_part(scale, "scale")


@contextlib.contextmanager
def grid_lock(root: str | Path, timeout_s: float | None = 600.0) -> Iterator[None]:
    """Exclusive lock on the grid root, held while deciding and submitting (or cancelling)."""
    with file_lock(Path(root) / LOCK_NAME, timeout_s):
        yield


def run_dir(root: str | Path, folder_name: str) -> Path:
    """``<root>/<folder_name>``: a run's folder name is one plain folder name (never ``..`` or a path)."""
    return Path(root) / check_path_part(folder_name, "run folder name")


def prepare_run(root: str | Path, folder_name: str, cfg_dict: dict[str, Any]) -> Path:
    """Create the run folder with its config.yaml; an existing folder must hold the same config."""
    run = RunDir(run_dir(root, folder_name).resolve())
    old = run.read_config()
    if old is not None:
        if old != cfg_dict:
            raise ConfigError(f"{run.config_path} holds a different config than the grid resolves for this run id; "
                              "move the folder away (the run id is a hash of the config, so this means it was edited)")
    else:
        run.write_config(cfg_dict)
    if not run.status_path.exists():
        extra = cfg_dict.get("extra", {})
        run.update_status("pending", run_name=extra.get("run_name"), run_id=extra.get("run_id"))
    return run.path


def training_key(cfg_dict: dict[str, Any]) -> str:
    """What a run's training depends on: sha256 of the canonical JSON of the resolved config without its run
    record (``extra``), so the same model reached by two grids (or two names) has one key."""
    body = {k: v for k, v in cfg_dict.items() if k != "extra"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def _index(store: str | Path, key: str, suffix: str) -> Path:
    return Path(store) / TRAINED_DIR / f"{key}{suffix}"


@contextlib.contextmanager
def training_lock(store: str | Path, key: str, stop: Callable[[], bool] | None = None) -> Iterator[bool]:
    """Held while one process trains ``key`` in ``store`` (a twin's job waits here, then adopts). Yields True
    once held; False without the lock when ``stop()`` turns true while waiting (a cancelled job stops waiting)."""
    path = _index(store, key, ".lock")
    fd = None
    while fd is None:
        fd = try_lock(path, wait_s=1.0)
        if fd is None and stop is not None and stop():
            yield False
            return
    try:
        yield True
    finally:
        os.close(fd)


def is_trained(d: str | Path) -> bool:
    """Training finished in (or was adopted by) ``d``: summary, encoder and last checkpoint are there."""
    run = RunDir(d)
    return run.summary_path.is_file() and run.encoder_path.is_file() and run.last_checkpoint.is_file()


def claimant(store: str | Path, key: str) -> Path | None:
    """The run folder the store's index names for ``key`` (trained or about to be), if it still holds that config."""
    try:
        entry = read_json(_index(store, key, ".json"))
    except (FileNotFoundError, ValueError, OSError):
        return None
    run = Path(entry.get("run", "")) if isinstance(entry, dict) else None
    if run is None or not RunDir(run).config_path.is_file():
        return None
    try:
        cfg = RunDir(run).read_config()
    except (ConfigError, OSError):
        return None
    return run if cfg is not None and training_key(cfg) == key else None


def claim_training(store: str | Path, key: str, run_dir: str | Path) -> None:
    """Record ``run_dir`` as the folder that trains (or trained) ``key`` in ``store``."""
    write_json(_index(store, key, ".json"), {"run": str(Path(run_dir).resolve()), "key": key})


def trained_twin(store: str | Path, key: str, exclude: str | Path | None = None) -> Path | None:
    """Another run folder of ``store`` that has finished training ``key``, or None."""
    run = claimant(store, key)
    if run is None or (exclude is not None and run.resolve() == Path(exclude).resolve()) or not is_trained(run):
        return None
    return run


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no extra disk; atomic replaces later never touch the other folder), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.adopt")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def adopt_training(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Give run folder ``dst`` the finished training of ``src`` (same training key): checkpoints and encoder
    hard-linked, metrics and TensorBoard files copied (they are appended to), then summary.json with ``dst``'s
    run id and ``trained_in``: ``src`` (written last: a folder with a summary is trained). Returns the summary."""
    s, d = RunDir(src), RunDir(dst)
    s_cfg, d_cfg = s.read_config() or {}, d.read_config() or {}
    if training_key(s_cfg) != training_key(d_cfg):
        raise ConfigError(f"cannot share the training of {s.path} with {d.path}: their configs differ beyond extra")
    summary = s.read_summary()
    if summary is None or not is_trained(s.path):
        raise ConfigError(f"cannot share the training of {s.path}: it has not finished training")
    for f in sorted(s.checkpoint_dir.iterdir()):
        if f.is_file() and f.suffix in (".pt", ".json"):  # checkpoints and their checksum record
            _link_or_copy(f, d.checkpoint_dir / f.name)
    _link_or_copy(s.encoder_path, d.encoder_path)
    if s.metrics_path.is_file():
        shutil.copyfile(s.metrics_path, d.metrics_path)
    if s.tensorboard_dir.is_dir():
        shutil.copytree(s.tensorboard_dir, d.tensorboard_dir, dirs_exist_ok=True)
    _offer_results(s, d, s_cfg.get("extra") or {}, d_cfg.get("extra") or {})
    summary = dict(summary, run_id=(d_cfg.get("extra") or {}).get("run_id"),
                   trained_in=str(summary.get("trained_in") or s.path))
    d.write_summary(summary)
    return summary


SHAREABLE_SUITES = ("knn", "linear", "fewshot")  # one result file each (finetune / shift also need a classifier)


def _offer_results(s: RunDir, d: RunDir, s_rec: dict[str, Any], d_rec: dict[str, Any]) -> None:
    """Copy the twin's results of suites ``d`` also runs when both records ask for the same evaluation settings
    (scale and ``eval``). The evaluation runner still decides: it reruns any result whose planned settings or
    checkpoint differ from what ``d`` plans, so a copy can only save a rerun, never stand in for one."""
    if (s_rec.get("scale"), s_rec.get("eval")) != (d_rec.get("scale"), d_rec.get("eval")):
        return
    for suite in d_rec.get("suites") or []:
        src, dst = s.result_path(suite), d.result_path(suite)
        if suite in SHAREABLE_SUITES and src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.adopt")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def list_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (folders holding a config.yaml), sorted by name."""
    r = Path(root)
    if not r.is_dir():
        return []
    return sorted(p for p in r.iterdir() if p.is_dir() and RunDir(p).config_path.is_file())


def tail_jsonl(path: str | Path, max_bytes: int = 65536) -> dict[str, Any] | None:
    """The last complete JSON line of a (possibly long) JSONL file, reading only its end."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return None
    with open(p, "rb") as f:
        f.seek(max(0, size - max_bytes))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        line = line.strip()
        if not line:
            continue
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def run_row(d: Path) -> dict[str, Any]:
    """One row of the aggregate view: identity, axes, state, progress, job, final losses, suites."""
    run = RunDir(d)
    cfg = run.read_config() or {}
    rec = run.record()
    st = run.read_status()
    last = tail_jsonl(run.metrics_path) or {}
    row: dict[str, Any] = {
        "run": rec.run_name or d.name,
        "run_id": rec.run_id,
        "method": cfg.get("method", {}).get("name"),
        "seed": cfg.get("train", {}).get("seed"),
        "state": st.get("state", "pending"),
        "step": last.get("step", st.get("step")),
        "loss": last.get("loss"),
        "job_id": st.get("job_id"),
        "executor": st.get("executor"),
        "log": st.get("log_out"),
        "reason": st.get("reason"),
        "folder": str(d),
    }
    for k, v in (rec.axes or {}).items():
        row[f"axis:{k}"] = v
    summary = run.read_summary() or {}
    for k, v in (summary.get("final") or {}).items():
        row[f"final:{k}"] = v
    for suite, res in (st.get("suites") or {}).items():
        row[f"suite:{suite}"] = res.get("state") if isinstance(res, dict) else res
    return row


def collect(root: str | Path):
    """A pandas DataFrame with one row per run folder under ``root`` (see :func:`run_row`)."""
    import pandas as pd

    rows = [run_row(d) for d in list_runs(root)]
    return pd.DataFrame(rows)


STATUS_COLUMNS = ("run", "state", "step", "loss", "job_id", "log")


def format_table(df, columns: tuple[str, ...] = STATUS_COLUMNS) -> str:
    """The ``grid status`` table: run, state, step, last loss, job id, log path (+ a state count line)."""
    if df is None or len(df) == 0:
        return "(no runs)"
    view = df.loc[:, [c for c in columns if c in df.columns]].copy()
    if "loss" in view:
        view["loss"] = view["loss"].map(lambda v: "-" if v is None or v != v else f"{v:.4f}")
    if "step" in view:
        view["step"] = view["step"].map(lambda v: "-" if v is None or v != v else str(int(v)))
    view = view.fillna("-").astype(str)
    counts = df["state"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES if counts.get(s, 0))
    return view.to_string(index=False) + f"\n{len(df)} runs: {summary}"


__all__ = ["TRAINED_DIR", "adopt_training", "claim_training", "claimant", "collect", "default_root", "format_table",
           "grid_lock", "is_trained", "list_runs", "prepare_run", "run_row", "tail_jsonl", "trained_twin",
           "training_key", "training_lock"]
