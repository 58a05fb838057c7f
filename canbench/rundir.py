"""The run folder: one owner for the name and format of every file a run writes or reads.

::

    <run>/
      config.yaml            the resolved config: the recipe and the run record (``extra``), written once
      status.json            state (pending | running | done | failed | cancelled | interrupted), step, job ids, reason
      .lock                  flock of the process that owns the folder (RunDir.own): pid, host, job id, start
      metrics.jsonl          one JSON line per logging step (loss terms, lr, img/s)
      summary.json           written when training finishes: final losses, costs, fingerprint, checkpoint sha256
      checkpoints/last.pt    everything an exact resume needs (+ prev.pt, the one before, and step_*.pt with
                             train.keep_checkpoints > 1; their sha256 in checkpoints/.checksums.json)
      encoder.pt             the encoder as a timm-loadable state dict
      eval/<suite>.json      one evaluation result per suite (metrics, fingerprint, checkpoint sha256)
      finetune/finetuned.pt  the finetuned classifier (+ source.json), read by the shift suite
      logs/                  links to the scheduler's log files
      tensorboard/           event files (with the tensorboard extra)

The trainer, the evaluation runner, the grid launcher, the reports, the demo and the test fixtures all
go through :class:`RunDir`; the run record's fields are :class:`canbench.config.RunRecord`'s.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from canbench.config import ConfigError, RunRecord
from canbench.io import file_lock, is_locked, read_json, read_jsonl, read_yaml, try_lock, write_json, write_yaml

# interrupted: the status said running, but no process owns the folder any more (killed, disk full, node lost);
# ``grid submit`` / ``pretrain --resume`` continue it from its last good checkpoint
STATES = ("pending", "running", "done", "failed", "cancelled", "interrupted")
OWNER_LOCK = ".lock"  # the flock the process training (or evaluating) a run holds on its folder (RunDir.own)
_OWNED: dict[Path, list[int]] = {}  # run folders this process owns: lock path -> [descriptor, depth]


class RunBusyError(ConfigError):
    """Another process owns the run folder; the message names it (pid, host, job id, start time)."""
_SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class RunDir:
    """Paths and small-file I/O of one run folder (nothing is created until something is written)."""

    CONFIG = "config.yaml"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    CHECKPOINTS = "checkpoints"
    LAST = "last.pt"
    PREV = "prev.pt"  # the checkpoint before last.pt, kept to fall back on (a corrupt or torn last.pt)
    ENCODER = "encoder.pt"
    EVAL = "eval"
    FINETUNE = "finetune"
    FINETUNED = "finetuned.pt"
    LOGS = "logs"
    TENSORBOARD = "tensorboard"
    SKIP = frozenset({EVAL, CHECKPOINTS, FINETUNE, LOGS, TENSORBOARD})  # never hold run folders

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- paths ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / self.LAST

    @property
    def prev_checkpoint(self) -> Path:
        return self.checkpoint_dir / self.PREV

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:09d}.pt"

    @property
    def encoder_path(self) -> Path:
        return self.path / self.ENCODER

    @property
    def eval_dir(self) -> Path:
        return self.path / self.EVAL

    def result_path(self, suite: str) -> Path:
        """``eval/<suite>.json`` (the suite name becomes a file name, so it is checked)."""
        if not isinstance(suite, str) or not _SUITE_RE.match(suite):
            raise ValueError(f"suite name {suite!r} must match {_SUITE_RE.pattern} (it becomes a file name)")
        return self.eval_dir / f"{suite}.json"

    def result_paths(self) -> list[Path]:
        return sorted(self.eval_dir.glob("*.json")) if self.eval_dir.is_dir() else []

    @property
    def finetune_dir(self) -> Path:
        return self.path / self.FINETUNE

    @property
    def finetuned_path(self) -> Path:
        return self.finetune_dir / self.FINETUNED

    @property
    def logs_dir(self) -> Path:
        return self.path / self.LOGS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    # ---- what is there ----------------------------------------------------------------------
    def is_run(self) -> bool:
        """A run folder holds a config.yaml (a checkpoint alone also counts, for folders made by hand)."""
        return self.config_path.is_file() or self.last_checkpoint.is_file()

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()

    # ---- config and record ------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """The config mapping, or None when there is none; a torn or non-mapping file raises a ConfigError naming
        the file (with line and column for a YAML syntax error)."""
        if not self.config_path.exists():
            return None
        obj = read_yaml(self.config_path)
        if not isinstance(obj, dict):
            raise ConfigError(f"{self.config_path}: expected a mapping, got {type(obj).__name__}")
        return obj

    def write_config(self, cfg: dict[str, Any]) -> None:
        write_yaml(self.config_path, cfg)

    def record(self) -> RunRecord:
        """The run record (``extra``) of config.yaml; an empty record without one (ill-typed keys ignored)."""
        try:
            cfg = self.read_config() or {}
        except (OSError, ValueError, yaml.YAMLError):
            cfg = {}
        extra = cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}
        return RunRecord.from_dict(extra, strict=False)

    # ---- status -----------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        """The run's status, or ``{"state": "pending"}`` when none was written (or it is unreadable)."""
        try:
            st = read_json(self.status_path)
        except (FileNotFoundError, ValueError):
            return {"state": "pending"}
        return st if isinstance(st, dict) else {"state": "pending"}

    @property
    def state(self) -> str:
        return str(self.read_status().get("state", "pending"))

    def write_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Set the state (keeping earlier fields such as job ids); failure fields are cleared on success.
        One atomic replace: readers never see half a file."""
        if state not in STATES:
            raise ValueError(f"status state {state!r} is not one of {STATES}")
        cur = self.read_status()
        if state != "failed":
            cur.pop("reason", None)
            cur.pop("traceback", None)
        cur.update(fields)
        cur["state"] = state
        cur["updated"] = time.time()
        write_json(self.status_path, cur)
        return cur

    # ---- the owner ---------------------------------------------------------------------------
    @property
    def owner_path(self) -> Path:
        return self.path / OWNER_LOCK

    def owner(self) -> dict[str, Any] | None:
        """Who owns the folder now: what the owning process wrote into the lock file (pid, host, job id,
        started), or None when no process holds the lock (a dead process never does: the kernel drops it)."""
        key = self.owner_path.resolve()
        if key not in _OWNED and not is_locked(key):
            return None
        try:
            info = json.loads(key.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        return info if isinstance(info, dict) else {}

    def live_state(self) -> str:
        """The state a user should see: status.json's, except ``running`` with no owner is ``interrupted``."""
        state = self.state
        if state == "running" and self.owner() is None:
            return "interrupted"
        return state

    @contextmanager
    def own(self, **info: Any) -> Iterator[None]:
        """Own the run folder for the ``with`` block: an ``flock`` on ``<run>/.lock`` holding ``info`` (pid, host,
        job id, start time) as JSON. Another process owning it is a :class:`RunBusyError` naming the holder;
        nesting in one process is allowed (the grid job owns the folder across training and evaluation)."""
        key = self.owner_path.resolve()
        if key in _OWNED:
            _OWNED[key][1] += 1
            try:
                yield
            finally:
                _OWNED[key][1] -= 1
            return
        fd = try_lock(key, wait_s=1.0)  # a probe (grid status) holds it for microseconds
        if fd is None:
            raise RunBusyError(f"{self.path} is in use by {describe_owner(self.owner())}; one process trains a run "
                               "folder at a time: wait for it, or stop it (grid cancel / kill its pid) and resume")
        try:
            payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                  **info}, default=str).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
            _OWNED[key] = [fd, 1]
            yield
        finally:
            _OWNED.pop(key, None)
            os.close(fd)

    @contextmanager
    def status_lock(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Held across a read-modify-write of status.json by processes other than the trainer."""
        with file_lock(self.path / ".status.lock", timeout_s):
            yield

    def update_status(self, state: str | None = None, **fields: Any) -> dict[str, Any]:
        """Locked read-modify-write of status.json; ``state=None`` keeps the current state."""
        with self.status_lock():
            return self.write_status(state or self.state, **fields)

    # ---- results of training ----------------------------------------------------------------
    def read_summary(self) -> dict[str, Any] | None:
        """summary.json, or None when missing or torn."""
        try:
            obj = read_json(self.summary_path)
        except (FileNotFoundError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete line of metrics.jsonl (a torn last line is skipped)."""
        return [r for r in read_jsonl(self.metrics_path) if isinstance(r, dict)]

    def keep_metrics_until(self, step: int) -> None:
        """Drop the metric lines logged after ``step`` (a resumed run logs them again)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        from canbench.io import write_text

        write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def last_activity(self) -> float:
        """The newest modification time of config, status and summary (0 when none exists)."""
        return max((p.stat().st_mtime for p in (self.config_path, self.status_path, self.summary_path)
                    if p.exists()), default=0.0)


def describe_owner(info: dict[str, Any] | None) -> str:
    """``pid 123 on host (job 456), since 2026-01-01 10:00:00``, from what :meth:`RunDir.own` wrote."""
    if not info:
        return "another process"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("job_id"):
        parts.append(f"(job {info['job_id']})")
    if isinstance(info.get("started"), (int, float)):
        parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}")
    return " ".join(parts)


def find_runs(root: str | os.PathLike) -> list[RunDir]:
    """Every folder under ``root`` (``root`` included) that holds a config.yaml, sorted; hidden folders and
    a run's own sub-folders (eval, checkpoints, finetune, ...) are not searched."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"results root {root} is not a folder")
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in RunDir.SKIP)
        if RunDir.CONFIG in filenames:
            runs.append(RunDir(dirpath))
    return sorted(runs, key=lambda r: r.path)


def check_path_part(value: Any, key: str) -> str:
    """``value`` as one folder name, else a ConfigError naming ``key`` and the value.

    The one rule for every name that becomes a path part (a grid's name, a scale, a run's folder name, a variant
    label): a non-empty string that is not ``.`` or ``..``, holds no separator (``/``, ``\\``: so no absolute
    path either), no NUL, newline or other control character, and fits a file name (255 bytes)."""
    if not isinstance(value, str):
        why = f"a name must be a string, not {type(value).__name__}"
    elif not value:
        why = "the name is empty"
    elif value in (".", ".."):
        why = f"{value!r} is {'this' if value == '.' else 'the parent'} folder, not a name"
    elif "/" in value or "\\" in value:
        why = "a name must not hold '/' or '\\' (it would be a path, or an absolute one)"
    elif any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        why = "a name must not hold NUL, newlines or other control characters"
    elif len(value.encode("utf-8", "surrogateescape")) > 255:
        why = "the name is longer than 255 bytes"
    else:
        return value
    raise ConfigError(f"{key}={value!r} cannot be a folder name: {why}")


__all__ = ["OWNER_LOCK", "RunBusyError", "RunDir", "RunRecord", "STATES", "check_path_part", "describe_owner",
           "find_runs"]
