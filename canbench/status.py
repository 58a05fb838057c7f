"""Run status files: ``status.json`` in a run folder, always written atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from canbench.io import read_json, write_json

STATES = ("pending", "running", "done", "failed", "cancelled")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status, or ``{"state": "pending"}`` when none was written (or it is unreadable)."""
    p = Path(run_dir) / "status.json"
    try:
        return read_json(p)
    except (FileNotFoundError, ValueError):
        return {"state": "pending"}


def write_status(run_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Set the state (keeping earlier fields such as job ids); failure fields are cleared on success."""
    if state not in STATES:
        raise ValueError(f"status state {state!r} is not one of {STATES}")
    cur = read_status(run_dir)
    if state != "failed":
        cur.pop("reason", None)
        cur.pop("traceback", None)
    cur.update(fields)
    cur["state"] = state
    cur["updated"] = time.time()
    write_json(Path(run_dir) / "status.json", cur)
    return cur
