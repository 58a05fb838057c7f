"""The trainer's one logging hook: metrics.jsonl, the final losses, the status step, a progress bar, TensorBoard.

Every ``train.log_every`` steps (and at the last step) :class:`RunLogger` averages each loss term over
the steps since the previous line and over ranks, checks that every value is finite (naming the first
bad step and term), and rank 0 writes one JSON line; the status file carries the step for ``grid status``
and the demo. tqdm draws a bar only on a terminal. Values stay on the device between log steps (no per-step
host sync).

The same scalars (and, through :func:`open_sinks`, the evaluation suites' metrics) also go to the optional
sinks users expect: TensorBoard event files in ``<run>/tensorboard`` when the ``tensorboard`` extra is
installed, and Weights & Biases when the run's config says ``train.wandb: true`` (the ``wandb`` extra;
imported only then, offline unless ``WANDB_MODE`` is set, files in ``<run>/wandb``).

What it has collected travels in every checkpoint (:meth:`RunLogger.state_dict`), so a run resumed at any
step — a preemption does not wait for a log boundary — writes exactly the lines and final losses an
uninterrupted run writes. The *final losses* a run reports (summary.json, Table 4) are the mean of the
per-step values over a fixed final window, the last :func:`final_window` steps, not of whatever log lines
happen to fall there.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from typing import Any

import torch

from canbench.config import ConfigError
from canbench.io import append_jsonl
from canbench.rundir import RunDir
from canbench.runtime import all_reduce_mean

log = logging.getLogger("canbench.pretrain")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""


def final_window(total_steps: int) -> int:
    """Steps the final losses average over: the last tenth of the run (at least one step)."""
    return max(1, round(0.1 * total_steps))


class RunLogger:
    """Collects the loss terms of each step; writes a metrics line every ``log_every`` steps."""

    def __init__(self, run: RunDir, *, total_steps: int, steps_per_epoch: int, log_every: int, accum_steps: int,
                 start_step: int, device: torch.device, is_main: bool,
                 config: dict[str, Any] | None = None) -> None:
        self.run, self.total, self.spe = run, total_steps, steps_per_epoch
        self.every, self.accum = log_every, accum_steps
        self.device, self.is_main = device, is_main
        self.window: dict[str, list[torch.Tensor]] = {}
        self.final_from = total_steps - final_window(total_steps) + 1  # the first step of the final window
        self.final_sums: dict[str, torch.Tensor] = {}
        self.final_count = 0
        self.step = start_step
        self.t_last, self.n_img = time.perf_counter(), 0
        self.bar = _progress(total_steps, start_step) if is_main else None
        self.sinks = open_sinks(run, config) if is_main else None

    def restart_clock(self, step: int) -> None:
        """(Re)start the img/s clock at ``step``: the first line after a resume times only this session's steps."""
        self.step = step
        self.t_last, self.n_img = time.perf_counter(), 0

    def after_step(self, step: int, terms: dict[str, list[torch.Tensor]], lr: float, images: int) -> dict | None:
        """Record step ``step``'s terms (one value per micro-batch); log at ``log_every`` and the last step."""
        self.step = step
        for k, vals in terms.items():
            self.window.setdefault(k, []).extend(vals)
        if step >= self.final_from:  # this step's value of each term: the mean of its micro-batches
            for k, vals in terms.items():
                mean = torch.stack(vals).mean()
                self.final_sums[k] = self.final_sums[k] + mean if k in self.final_sums else mean
            self.final_count += 1
        self.n_img += images
        last = step == self.total
        if step % self.every and not last:
            return None
        t_now = time.perf_counter()
        record = self._write(lr, self.n_img / max(t_now - self.t_last, 1e-9))
        self.window, self.t_last, self.n_img = {}, t_now, 0
        if self.is_main and not last:  # progress for `grid status` / the demo (one small file)
            self.run.write_status("running", step=step, total_steps=self.total)
        if self.bar is not None:
            self.bar.update(self.every if not last else self.total - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        if self.sinks is not None:
            self.sinks.log({k: v for k, v in record.items() if k != "time"}, step, prefix="train")
        return record

    def check_finite(self) -> None:
        """Raise NonFiniteLossError naming the first bad step and term (host sync: log / checkpoint steps only)."""
        for k, vals in self.window.items():
            for i, v in enumerate(vals):
                if not torch.isfinite(v).all():
                    first = self.step - (len(vals) - i - 1) // self.accum
                    kept = (f"the last good checkpoint is kept in {self.run.last_checkpoint}" if
                            self.run.has_checkpoint() else f"no checkpoint was written yet in {self.run.path}")
                    raise NonFiniteLossError(f"non-finite loss term {k!r} at step {first}: {float(v)}; {kept}")

    def _write(self, lr: float, img_per_s: float) -> dict[str, Any]:
        self.check_finite()
        record: dict[str, Any] = {"step": self.step, "epoch": self.step / self.spe, "lr": lr,
                                  "img_per_s": img_per_s, "time": time.time()}
        for k, vals in self.window.items():
            record[k] = float(all_reduce_mean(torch.stack(vals).mean()))
        if self.device.type == "cuda":
            record["peak_mem_bytes"] = torch.cuda.max_memory_allocated(self.device)
        if self.is_main:
            append_jsonl(self.run.metrics_path, record)
            if not sys.stderr.isatty():
                log.info("step %d/%d %s", self.step, self.total, " ".join(f"{k}={record[k]:.4g}" for k in self.window))
        return record

    def final(self) -> dict[str, float]:
        """Each term's mean over the final window (and over ranks); {} before the window is complete."""
        if self.final_count < self.total - self.final_from + 1:
            return {}
        return {k: float(all_reduce_mean(v / self.final_count)) for k, v in self.final_sums.items()}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to log as if uninterrupted (CPU tensors; loads with weights_only=True)."""
        return {"window": {k: torch.stack(v).cpu() for k, v in self.window.items()},
                "final_sums": {k: v.detach().cpu() for k, v in self.final_sums.items()},
                "final_count": self.final_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = {k: list(v.to(self.device).unbind(0)) for k, v in state["window"].items()}
        self.final_sums = {k: v.to(self.device) for k, v in state["final_sums"].items()}
        self.final_count = int(state["final_count"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.sinks is not None:
            self.sinks.close()


def _progress(total: int, start: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run.tensorboard_dir))


def _wandb(run: RunDir, cfg: dict[str, Any]):
    """A Weights & Biases run for ``run`` (imported only when asked for; offline unless WANDB_MODE is set)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.wandb is true but the wandb package is not installed: "
                          "pip install 'canbench[wandb]' (or set train.wandb=false)") from None
    rec = cfg.get("extra") or {}
    mode = os.environ.get("WANDB_MODE", "offline")  # compute nodes rarely reach the internet: sync later
    path = run.path / "wandb"
    path.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "canbench"), dir=str(path), mode=mode,
                      name=rec.get("run_name") or run.name, id=rec.get("run_id") or None, resume="allow",
                      group=rec.get("grid"), config={k: v for k, v in cfg.items() if k != "extra"} | {"extra": rec})


ID_KEYS = ("dataset", "set", "shots")  # what names one entry of a per-set result list


def _scalars(d: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) metrics mapping as ``prefix/key/sub`` -> float (lists are skipped)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_scalars(v, name))
        elif isinstance(v, list):  # per-set results (few-shot, shift): named by their set and shot count
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    tag = "_".join(f"{item[t]}{'shot' if t == 'shots' else ''}" for t in ID_KEYS if t in item)
                    out.update(_scalars({k: x for k, x in item.items() if k not in ID_KEYS}, f"{name}/{tag or i}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


class Sinks:
    """TensorBoard and Weights & Biases behind one ``log(scalars, step, prefix)``; either may be absent."""

    def __init__(self, tb: Any = None, wandb_run: Any = None) -> None:
        self.tb, self.wandb = tb, wandb_run

    def log(self, metrics: dict[str, Any], step: int, prefix: str) -> dict[str, float]:
        """Send every finite number of ``metrics`` as ``prefix/<key>`` at ``step``; returns what was sent."""
        scalars = _scalars(metrics, prefix)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=step)
        return scalars

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _importable(name: str) -> bool:
    return sys.modules.get(name) is not None or importlib.util.find_spec(name) is not None


def check_sinks(config: dict[str, Any] | None) -> None:
    """Raise ConfigError now when ``config`` asks for Weights & Biases and the package is not installed."""
    if bool(((config or {}).get("train") or {}).get("wandb")) and not _importable("wandb"):
        raise ConfigError("train.wandb is true but the wandb package is not installed: "
                          "pip install 'canbench[wandb]' (or set train.wandb=false)")


def open_sinks(run: RunDir, config: dict[str, Any] | None = None) -> Sinks:
    """The run's TensorBoard writer (when the extra is installed) and, when ``config`` (the run's config as a
    mapping; default its ``config.yaml``) says ``train.wandb: true``, its W&B run."""
    cfg = (run.read_config() if config is None else config) or {}
    wandb_on = bool((cfg.get("train") or {}).get("wandb"))
    return Sinks(_tensorboard(run), _wandb(run, cfg) if wandb_on else None)


__all__ = ["NonFiniteLossError", "RunLogger", "Sinks", "check_sinks", "final_window", "open_sinks"]
