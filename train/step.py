"""One training step: the method, its optimizer and what happens between two optimizer steps.

:class:`TrainStep` is the step the trainer runs and the throughput benchmark times: seeded init, AdamW
over :func:`param_groups` (fused on CUDA), a GradScaler for fp16 only, DDP over ranks, optional
``torch.compile``; each call splits the batch into ``optim.accum_steps`` micro-batches, runs them under
autocast (bf16 on GPU by default), back-propagates, clips and steps, and returns the loss terms of each
micro-batch as device tensors (no host synchronisation).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn

from canbench.config import Config
from canbench.methods import build_method
from canbench.runtime import DistInfo

Batch = dict[str, torch.Tensor]


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 on GPU by default, fp32 (no autocast) on CPU; fp16 uses a GradScaler."""
    p = cfg.train.precision
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def use_compile(cfg: Config, device: torch.device) -> bool:
    """``train.compile``: true / false, or auto = on for CUDA (a win for every method measured on an H100,
    BENCHMARKS.md) and off on CPU (inductor's C++ compile costs minutes there; smoke runs last seconds)."""
    c = cfg.train.compile
    return c == "true" or (c == "auto" and device.type == "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D params (norms, biases) and on no_weight_decay() names."""
    skip: set[str] = set()
    for name, mod in model.named_modules():
        if hasattr(mod, "no_weight_decay"):
            skip |= {f"{name}.{n}" if name else n for n in mod.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(method: nn.Module, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None
                    ) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """AdamW over :func:`param_groups` (fused kernels on CUDA; lr set per step) and a GradScaler for fp16 only."""
    optimizer = torch.optim.AdamW(param_groups(method, cfg.optim.weight_decay), lr=0.0,
                                  betas=tuple(cfg.optim.betas), **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return optimizer, scaler


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, method: nn.Module,
                   clip_grad: float | None) -> None:
    """After backward: unscale (fp16), clip the global grad norm, step, zero the grads (no host sync)."""
    if scaler:
        scaler.unscale_(optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class TrainStep:
    """``step(batch, lr)`` runs one optimizer step of ``cfg``'s method on ``device`` and returns its loss terms."""

    def __init__(self, cfg: Config, device: torch.device, dist: DistInfo | None = None) -> None:
        dist = dist or DistInfo()
        torch.manual_seed(cfg.train.seed)  # parameter init is a function of the seed alone
        self.device = device
        self.method = build_method(cfg).to(device)
        self.amp_dtype = autocast_dtype(cfg, device)
        self.optimizer, self.scaler = build_optimizer(self.method, cfg, device, self.amp_dtype)
        model: nn.Module = self.method
        if dist.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if use_compile(cfg, device):
            model = torch.compile(model)
        self.model = model
        self.model.train()
        self.accum = cfg.optim.accum_steps
        self.clip_grad = cfg.optim.clip_grad

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def __call__(self, batch: Batch, lr: float) -> dict[str, list[torch.Tensor]]:
        """One optimizer step at learning rate ``lr``; ``{term: [value of each micro-batch]}`` (detached, fp32)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        views, seeds = batch["views"], batch["seed"]
        chunk = seeds.shape[0] // self.accum
        terms: dict[str, list[torch.Tensor]] = {}
        for i in range(self.accum):
            micro = {"views": views[:, i * chunk:(i + 1) * chunk], "seed": seeds[i * chunk:(i + 1) * chunk]}
            sync = i == self.accum - 1 or not hasattr(self.model, "no_sync")
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx, torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                     enabled=self.amp_dtype is not None):
                out = self.model(micro)
            loss = out["loss"] / self.accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for k, v in out.items():
                terms.setdefault(k, []).append(v.detach().float())
        optimizer_step(self.optimizer, self.scaler, self.method, self.clip_grad)
        return terms


__all__ = ["Batch", "TrainStep", "autocast_dtype", "build_optimizer", "optimizer_step", "param_groups", "use_compile"]
