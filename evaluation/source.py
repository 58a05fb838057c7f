"""What is evaluated: a run folder, a canbench checkpoint file, a finetuned classifier or a public checkpoint.

:func:`resolve_source` tells them apart (a public checkpoint only with ``fmt="mae" | "timm"``) and
:meth:`Source.encoder` is the one way an encoder is loaded for evaluation: a canbench checkpoint through
:func:`canbench.train.checkpoint.load_encoder` (its own model config, strict), a public one through
:func:`canbench.evaluation.external.load_external` (its shape read from the weights). Checkpoint files are
read once, with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from canbench.config import Config, ConfigError, ModelConfig
from canbench.evaluation import results as R
from canbench.io import torch_load
from canbench.rundir import RunDir
from canbench.train import checkpoint as ckpt_io
from canbench.train.recipe import config_from_dict

log = logging.getLogger(__name__)

KINDS = ("run", "file", "finetuned", "external")
FORMATS = ("mae", "timm")


def finetuned_meta(path: Path) -> dict[str, Any]:
    """A finetuned classifier's metadata (everything but its weights)."""
    obj = torch_load(path)
    return {k: v for k, v in obj.items() if k != "model"} if isinstance(obj, dict) else {}


def run_config(run: RunDir | None) -> Config | None:
    """The resolved config of a run folder, or None without one."""
    if run is None or not run.config_path.is_file():
        return None
    try:
        return config_from_dict(run.read_config() or {})
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(run.config_path)) else f"{run.config_path}: {msg}") from None


@dataclass
class Source:
    """The checkpoint under evaluation and what is known about it."""

    kind: str  # run | file | finetuned | external
    path: Path  # the checkpoint file
    run: RunDir | None = None  # the run folder it belongs to (if any)
    fmt: str | None = None  # external: mae | timm
    arch: str | None = None  # external: --arch
    pretrain_cfg: Config | None = None
    _loaded: dict[str, Any] | None = field(default=None, repr=False)  # the checkpoint, read once
    _info: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path | None:
        return self.run.path if self.run is not None else None

    def checkpoint(self) -> dict[str, Any]:
        """The file's contents (a canbench checkpoint, or a public checkpoint's encoder state dict), read once."""
        if self._loaded is None:
            if self.kind == "external":
                from canbench.evaluation.external import read_checkpoint

                self._loaded = read_checkpoint(self.path)
            else:
                self._loaded = ckpt_io.load(self.path)
                if self.kind in ("run", "file") and not ckpt_io.is_canbench_checkpoint(self._loaded):
                    raise ConfigError(f"{self.path}: not a canbench checkpoint (keys {sorted(self._loaded)[:8]}); "
                                      "for public MAE / timm weights pass --format mae|timm")
        return self._loaded

    def config(self) -> Config | None:
        """The pretraining config (canbench checkpoints and run folders; None for public checkpoints)."""
        if self.pretrain_cfg is None and self.kind in ("run", "file"):
            self.pretrain_cfg = config_from_dict(self.checkpoint()["config"])
        return self.pretrain_cfg

    def checkpoint_info(self) -> dict[str, Any]:
        """``{"path", "sha256", "step"}`` of the evaluated checkpoint (computed once)."""
        if self._info is None:
            step = None
            if self.kind in ("run", "file"):
                step = self.checkpoint().get("step")
            elif self.kind == "finetuned":
                step = finetuned_meta(self.path).get("step")
            self._info = R.checkpoint_info(self.path, step)
        return self._info

    def encoder(self, model_cfg: ModelConfig | None = None) -> torch.nn.Module:
        """The pretrained encoder (eval mode, CPU): canbench checkpoints rebuild their own model; a public
        checkpoint needs ``model_cfg`` (:func:`canbench.evaluation.external.external_model_config`)."""
        if self.kind == "finetuned":
            raise ConfigError(f"{self.path} is a finetuned classifier: only the shift suite evaluates it")
        if self.kind == "external":
            from canbench.evaluation.external import load_external
            from canbench.methods.backbone import build_encoder

            if model_cfg is None:
                raise ValueError("a public checkpoint's encoder needs its model config")
            enc = build_encoder(model_cfg)
            report = load_external(enc, self.checkpoint(), fmt=self.fmt)
            log.info("loaded %s checkpoint %s (%d tensors, dropped %s)", self.fmt, self.path, len(report["loaded"]),
                     report["dropped"][:6])
        else:
            enc, _, _ = ckpt_io.load_encoder(self.checkpoint())
        return enc.eval()


def resolve_source(path: str | Path, fmt: str | None = None, arch: str | None = None) -> Source:
    """A run folder, a canbench checkpoint file, a finetune folder / file, or (``fmt``) a public checkpoint."""
    p = Path(path).expanduser()
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r} is not one of 'mae', 'timm'")
        if not p.is_file():
            raise ConfigError(f"public checkpoint {p} does not exist (or is not a file)")
        return Source("external", p, fmt=fmt, arch=arch)
    if arch is not None:
        raise ConfigError("--arch describes public checkpoints: use it with --format mae|timm")
    if p.is_dir():
        run = RunDir(p)
        if run.has_checkpoint():
            return Source("run", run.last_checkpoint, run=run, pretrain_cfg=run_config(run))
        if (p / RunDir.FINETUNED).is_file():
            parent = RunDir(p.parent)
            owner = parent if parent.is_run() else None
            return Source("finetuned", p / RunDir.FINETUNED, run=owner, pretrain_cfg=run_config(owner))
        raise ConfigError(f"{p} is neither a run folder (no {RunDir.CHECKPOINTS}/{RunDir.LAST}) nor a finetune "
                          f"folder (no {RunDir.FINETUNED})")
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist")
    obj = torch_load(p)
    from canbench.evaluation.classifier import CHECKPOINT_FORMAT

    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        owner = RunDir(p.parent.parent) if p.parent.name == RunDir.FINETUNE else None
        owner = owner if owner is not None and owner.is_run() else None
        return Source("finetuned", p, run=owner, pretrain_cfg=run_config(owner))
    if ckpt_io.is_canbench_checkpoint(obj):
        owner = RunDir(p.parent.parent) if p.parent.name == RunDir.CHECKPOINTS else None
        return Source("file", p, run=owner, pretrain_cfg=config_from_dict(obj["config"]), _loaded=obj)
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ConfigError(f"{p} is not a canbench checkpoint (top-level keys {keys}); for public MAE / timm "
                      "weights pass --format mae|timm (and --arch, e.g. vit_base)")


__all__ = ["FORMATS", "KINDS", "Source", "finetuned_meta", "resolve_source", "run_config"]
