"""One training step: the method, its optimizer and what happens between two optimizer steps.

:class:`TrainStep` is the step the trainer runs and the throughput benchmark times: seeded init, AdamW
over :func:`param_groups` (fused on CUDA), a GradScaler for fp16 only, DDP over ranks, optional
``torch.compile``; each call splits the batch into ``optim.accum_steps`` micro-batches, runs them under
autocast (bf16 on GPU by default), back-propagates, clips and steps, and returns the loss terms of each
micro-batch as device tensors (no host synchronisation).

**Exact accumulation.** A method whose loss couples the samples of a batch (InfoNCE negatives, the projection
head's BatchNorm: CAN with ``l_nce > 0``, SimCLR) accumulates with a gradient cache (Gao et al. 2021, "Scaling
Deep Contrastive Learning Batch Size under Memory Limited Setup"), so ``accum_steps = k`` gives the loss and
the gradients of one step on the whole batch:

1. every micro-batch's encoder runs without a graph; only its pooled features ``z_i`` are kept (N x D floats);
2. the head, its BatchNorm and InfoNCE run once on all of them, with gradients: the head's parameters get
   theirs, and each ``z_i`` its gradient ``g_i``; BatchNorm's running statistics move once, over the whole batch;
3. each micro-batch runs again with a graph (the same inputs: masks and noise are functions of per-sample
   seeds, and the torch RNG state of step 1 is restored for anything else, e.g. drop path), and
   ``sum(z_i * g_i) + (its per-sample terms) / k`` is back-propagated.

Methods without a batch-coupled term (MAE; CAN without InfoNCE) accumulate plainly: each micro-batch's
mean loss / k. Both are the one loop of :meth:`TrainStep.backward`. On several ranks the cached path averages
the gradients itself (one all-reduce), as DDP does for the plain path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from canbench.config import Config, ConfigError
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


ADAMW_IMPLS = ("auto", "fused", "foreach", "loop")  # auto: fused on CUDA, torch's default elsewhere


def build_optimizer(method: nn.Module, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None,
                    adamw: str = "auto") -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """AdamW over :func:`param_groups` (fused kernels on CUDA; lr set per step) and a GradScaler for fp16 only.

    ``adamw`` picks torch's implementation (a throughput lever): ``fused`` (one kernel), ``foreach``
    (multi-tensor), ``loop`` (one parameter at a time); ``auto`` = fused on CUDA, torch's default elsewhere."""
    if adamw not in ADAMW_IMPLS:
        raise ConfigError(f"adamw={adamw!r} is not one of {ADAMW_IMPLS}")
    impl = {"auto": {"fused": True} if device.type == "cuda" else {}, "fused": {"fused": True},
            "foreach": {"foreach": True}, "loop": {"foreach": False}}[adamw]
    optimizer = torch.optim.AdamW(param_groups(method, cfg.optim.weight_decay), lr=0.0,
                                  betas=tuple(cfg.optim.betas), **impl)
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


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_norm_mlp(module: nn.Module) -> int:
    """``torch.compile`` each LayerNorm and each MLP (fc1 -> GELU -> fc2) in place, the rest stays eager
    (a throughput lever: fused norm / GELU epilogues without compiling the whole model); returns how many."""
    from timm.layers import Mlp

    targets = [m for m in module.modules() if isinstance(m, (nn.LayerNorm, Mlp))]
    for m in targets:
        m.compile()
    return len(targets)


@dataclass(frozen=True)
class StepLevers:
    """Throughput levers of the model step, off by default (``canbench throughput`` switches each alone).

    ``compile_mode``: ``torch.compile(mode=...)`` when the step is compiled (``reduce-overhead`` = CUDA
    graphs); ``adamw``: see :func:`build_optimizer`; ``channels_last``: 4-D parameters (the patch
    embedding) in channels-last layout; ``compile_norm_mlp``: :func:`compile_norm_mlp` on an eager step."""

    compile_mode: str | None = None
    adamw: str = "auto"
    channels_last: bool = False
    compile_norm_mlp: bool = False

    def __post_init__(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode={self.compile_mode!r} is not one of {COMPILE_MODES}")
        if self.adamw not in ADAMW_IMPLS:
            raise ConfigError(f"adamw={self.adamw!r} is not one of {ADAMW_IMPLS}")


class TrainStep:
    """``step(batch, lr)`` runs one optimizer step of ``cfg``'s method on ``device`` and returns its loss terms."""

    def __init__(self, cfg: Config, device: torch.device, dist: DistInfo | None = None,
                 levers: StepLevers | None = None) -> None:
        dist = dist or DistInfo()
        levers = levers or StepLevers()
        torch.manual_seed(cfg.train.seed)  # parameter init is a function of the seed alone
        self.device = device
        self.method = build_method(cfg).to(device)
        if levers.channels_last:
            self.method.to(memory_format=torch.channels_last)
        compiled = use_compile(cfg, device)
        if levers.compile_norm_mlp and not compiled:
            compile_norm_mlp(self.method)
        self.amp_dtype = autocast_dtype(cfg, device)
        self.optimizer, self.scaler = build_optimizer(self.method, cfg, device, self.amp_dtype, levers.adamw)
        model: nn.Module = self.method
        if dist.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        mode = {"mode": levers.compile_mode} if levers.compile_mode else {}
        if compiled:
            model = torch.compile(model, **mode)
        self.model = model
        self.model.train()
        self.accum = cfg.optim.accum_steps
        self.clip_grad = cfg.optim.clip_grad
        self.cached = self.accum > 1 and self.method.batch_coupled  # exact accumulation (module docstring)
        # the cached path calls the method's two parts itself (not through DDP, which it replaces by one
        # all-reduce); compiled like the plain path's model when train.compile asks for it
        self.step_terms = (torch.compile(self.method.step_terms, **mode) if self.cached and compiled
                           else self.method.step_terms)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def __call__(self, batch: Batch, lr: float) -> dict[str, list[torch.Tensor]]:
        """One optimizer step at learning rate ``lr``; ``{term: [value of each micro-batch]}`` (detached, fp32)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        terms = self.backward(batch)
        optimizer_step(self.optimizer, self.scaler, self.method, self.clip_grad)
        return terms

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler else loss

    def backward(self, batch: Batch) -> dict[str, list[torch.Tensor]]:
        """Accumulate the gradients of one step on ``batch`` (``optim.accum_steps`` micro-batches) into ``.grad``.

        Returns ``{term: [value of each micro-batch]}``; with the gradient cache the batch-coupled term is the
        whole batch's value, repeated for each micro-batch, and ``loss`` the whole batch's loss."""
        views, seeds = batch["views"], batch["seed"]
        chunk = seeds.shape[0] // self.accum
        micros = [{"views": views[:, i * chunk:(i + 1) * chunk], "seed": seeds[i * chunk:(i + 1) * chunk]}
                  for i in range(self.accum)]
        cache = self._feature_gradients(micros) if self.cached else None
        terms: dict[str, list[torch.Tensor]] = {}
        for i, micro in enumerate(micros):
            if cache is None:  # plain accumulation (DDP syncs on the last micro-batch)
                sync = i == self.accum - 1 or not hasattr(self.model, "no_sync")
                with contextlib.nullcontext() if sync else self.model.no_sync(), self._autocast():
                    out = self.model(micro)
                self._scale(out["loss"] / self.accum).backward()
            else:
                _set_rng(cache.rng[i])  # the inputs of the feature pass, for torch-RNG draws (drop path)
                with self._autocast():
                    z, local = self.step_terms(micro)
                out = self.method.combine({**cache.terms, **local}, self.method.weights)
                local_loss = sum((self.method.weights[k] * v for k, v in local.items()
                                  if self.method.weights.get(k, 0.0) > 0), torch.zeros((), device=z.device))
                (self._scale(local_loss / self.accum) + (z.float() * cache.grads[i]).sum()).backward()
            for k, v in out.items():
                terms.setdefault(k, []).append(v.detach().float())
        if cache is not None:
            _set_rng(cache.rng_after)
            average_gradients(self.method)
        return terms

    def _feature_gradients(self, micros: list[Batch]) -> _FeatureCache:
        """Steps 1-2 of the gradient cache: the pooled features of every micro-batch without a graph, then the
        batch-coupled term on all of them with one backward (head gradients, feature gradients)."""
        rng, feats = [], []
        with torch.no_grad(), self._autocast():
            for micro in micros:
                rng.append(_get_rng(self.device))
                z, _ = self.step_terms(micro, local=False)
                feats.append(z.float())
        rng_after = _get_rng(self.device)
        n = [f.shape[0] // 2 for f in feats]
        z_all = torch.cat([f[:k] for f, k in zip(feats, n)] + [f[k:] for f, k in zip(feats, n)]).requires_grad_(True)
        with self._autocast():
            coupled = self.method.contrastive_terms(z_all)
        weighted = sum(self.method.weights[k] * v for k, v in coupled.items())
        self._scale(weighted).backward()
        g, total = z_all.grad, sum(n)
        grads, start = [], 0
        for k in n:  # back to each micro-batch's [view 1 | view 2] layout
            grads.append(torch.cat([g[start:start + k], g[total + start:total + start + k]]))
            start += k
        return _FeatureCache(terms={k: v.detach() for k, v in coupled.items()}, grads=grads, rng=rng,
                             rng_after=rng_after)


@dataclass
class _FeatureCache:
    terms: dict[str, torch.Tensor]  # the batch-coupled terms' values (whole batch)
    grads: list[torch.Tensor]  # d(weighted coupled terms) / d(pooled features), per micro-batch
    rng: list[tuple]  # torch RNG state before each micro-batch's feature pass
    rng_after: tuple


def _get_rng(device: torch.device) -> tuple:
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device)


def _set_rng(state: tuple) -> None:
    cpu, cuda, device = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def average_gradients(module: nn.Module) -> None:
    """Average ``.grad`` over ranks in one flat all-reduce (what DDP does; a no-op on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    start = 0
    for g in grads:
        g.copy_(flat[start:start + g.numel()].view_as(g))
        start += g.numel()


__all__ = ["ADAMW_IMPLS", "Batch", "COMPILE_MODES", "StepLevers", "TrainStep", "autocast_dtype", "average_gradients",
           "build_optimizer", "compile_norm_mlp", "optimizer_step", "param_groups", "use_compile"]
