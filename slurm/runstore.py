"""The run store: one folder per run under a grid root, plain files only (no database).

``<root>/<name>-<id>/`` holds ``config.yaml`` (the resolved config, written once), ``status.json``
(state, job ids, log paths; written atomically), ``logs/`` (links to the scheduler's log files),
and whatever the engine and the evaluation suites write (``metrics.jsonl``, ``checkpoints/``,
``summary.json``, ``eval/``). The aggregate view is a pandas table built from the folders.

Concurrency: ``grid_lock(root)`` (an ``fcntl`` lock on ``<root>/.grid.lock``) is held while a
command decides what to submit and submits it, so two racing ``grid submit`` never double-submit.
Status updates made by this package go through :meth:`canbench.rundir.RunDir.update_status`, which holds a
per-run lock for its read-modify-write (the trainer's own status writes are atomic replaces).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from canbench.config import ConfigError
from canbench.io import file_lock
from canbench.rundir import STATES, RunDir

LOCK_NAME = ".grid.lock"


def default_root(grid_name: str, scale: str) -> Path:
    """``runs/<grid name>/<scale>`` (relative to the working directory)."""
    return Path("runs") / grid_name / scale


@contextlib.contextmanager
def grid_lock(root: str | Path, timeout_s: float | None = 600.0) -> Iterator[None]:
    """Exclusive lock on the grid root, held while deciding and submitting (or cancelling)."""
    with file_lock(Path(root) / LOCK_NAME, timeout_s):
        yield


def run_dir(root: str | Path, folder_name: str) -> Path:
    return Path(root) / folder_name


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


__all__ = ["collect", "default_root", "format_table", "grid_lock", "list_runs", "prepare_run", "run_row",
           "tail_jsonl"]
