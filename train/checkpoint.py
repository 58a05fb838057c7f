"""Checkpoints: everything an exact resume needs, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from canbench.config import Config, ConfigError
from canbench.fingerprint import code_version
from canbench.io import torch_load, torch_save_atomic
from canbench.rundir import RunDir

log = logging.getLogger("canbench.pretrain")

FORMAT_VERSION = 1
ENCODER_PREFIX = "encoder."  # the encoder's keys inside a method's state dict


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: str | Path) -> Path:
    return RunDir(run_dir).last_checkpoint


def save(run_dir: str | Path, *, cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scaler: torch.amp.GradScaler | None, step: int, total_steps: int, extra: dict | None = None,
         keep: int = 1) -> Path:
    """Write ``checkpoints/last.pt`` atomically (and keep ``keep - 1`` older step-numbered copies)."""
    state = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": {"step": step, "total_steps": total_steps},  # the schedule is a pure function of step
        "step": step,
        "data": {"next_step": step},  # the data order is a pure function of (seed, step)
        "rng": rng_state(),
        "code_version": code_version(),
        "extra": extra or {},
    }
    run = RunDir(run_dir)
    path = run.last_checkpoint
    torch_save_atomic(state, path, previous=run.prev_checkpoint)  # the old last.pt becomes prev.pt
    if keep > 1:
        torch_save_atomic(state, run.step_checkpoint(step))
        olds = sorted(path.parent.glob("step_*.pt"))
        for old in olds[: max(0, len(olds) - (keep - 1))]:
            old.unlink(missing_ok=True)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file or a run folder's last checkpoint (weights_only=True)."""
    p = Path(path)
    if p.is_dir():
        p = checkpoint_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (expected a run folder with {RunDir.CHECKPOINTS}/{RunDir.LAST} "
                                "or a .pt file)")
    return torch_load(p, map_location)


def load_resumable(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest good checkpoint of a run folder and its path: ``last.pt``, else ``prev.pt`` (a crash between
    the two renames of :func:`save` leaves only ``prev.pt``). A file that is unreadable or whose sha256 differs
    from the one recorded when it was written is reported (a warning naming it) and skipped; None when the
    folder holds no checkpoint; a ConfigError when it holds some but none is good."""
    run = RunDir(run_dir)
    bad = []
    for p in (run.last_checkpoint, run.prev_checkpoint):
        if not p.is_file():
            continue
        try:
            ckpt = torch_load(p, map_location)
            if not isinstance(ckpt, dict) or "step" not in ckpt or "model" not in ckpt:
                raise ConfigError(f"{p} is not a canbench training checkpoint")
        except ConfigError as exc:
            log.warning("skipping checkpoint %s: %s", p, exc)
            bad.append(str(exc))
            continue
        if bad:
            log.warning("resuming from the previous checkpoint %s (step %s) instead", p, ckpt["step"])
        return ckpt, p
    if bad:
        raise ConfigError(f"{run.path}: no good checkpoint left to resume from ({'; '.join(bad)}); start over with "
                          "--force (pretrain) or move the run folder away")
    return None


def is_canbench_checkpoint(obj: Any) -> bool:
    """A pretraining checkpoint written by :func:`save` (a config and a method state dict)."""
    return isinstance(obj, dict) and "config" in obj and "model" in obj


def encoder_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's state dict inside a pretraining checkpoint (its ``encoder.`` keys, prefix removed)."""
    return {k[len(ENCODER_PREFIX):]: v for k, v in ckpt["model"].items() if k.startswith(ENCODER_PREFIX)}


def load_encoder(path: str | Path | dict[str, Any], map_location: str | torch.device = "cpu"):
    """(encoder, config, checkpoint) from a run folder, a checkpoint file or an already loaded checkpoint.

    The one place a canbench encoder is rebuilt: its own model config, its weights loaded strictly.
    """
    from canbench.methods.backbone import build_encoder
    from canbench.train.recipe import config_from_dict

    ckpt = path if isinstance(path, dict) else load(path, map_location)
    if not is_canbench_checkpoint(ckpt):
        where = "checkpoint" if isinstance(path, dict) else str(path)
        raise ConfigError(f"{where}: not a canbench checkpoint (keys {sorted(ckpt)[:8]}); "
                          "for public MAE / timm weights pass --format mae|timm")
    cfg = config_from_dict(ckpt["config"])
    enc = build_encoder(cfg.model)
    enc.load_state_dict(encoder_state(ckpt), strict=True)
    return enc, cfg, ckpt
