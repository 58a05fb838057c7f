"""FLOPs per image of a whole pretraining method (encoder, decoder, projection head, sigma MLP, loss).

Convention: 2 FLOPs per multiply-add (``torch.utils.flop_counter``; PaLM / nanoGPT MFU convention).
fvcore counts 1 per multiply-add, so its totals are doubled before they are compared.

How it is counted (see docs/efficiency.md):

* :func:`count_method_flops` builds the method on the **meta device** (no memory, no arithmetic: a
  ViT-L method counts in 1-2 s on a 2-core CPU), runs one forward and one forward + backward under
  :class:`torch.utils.flop_counter.FlopCounterMode` and divides by the batch. "train" is **measured**
  (forward + backward, the counter sees every backward GEMM), not assumed to be 3 x forward: it comes
  out at 2.99 x, because the patch-embedding convolution needs no input gradient.
* :func:`count_fvcore_flops` is the independent cross-check (fvcore's jit-trace counter, on real CPU
  tensors: fvcore cannot trace meta tensors); the two agree within 0.14% at ViT-B/16 and ViT-L/16
  and within 0.6% at vit_micro (fvcore also counts norm layers).

Traps handled here (docs/efficiency.md): with timm's fused attention fvcore silently skips
``aten::scaled_dot_product_attention`` and FlopCounterMode counts 0 for the CPU flash kernel
``_scaled_dot_product_flash_attention_for_cpu``. While counting, every timm ``Attention`` module is
switched to its explicit ``q @ k^T`` / ``attn @ v`` path (:func:`unfused_attention`), which both
counters see. Activation checkpointing is switched off while counting: these are model FLOPs, the
recomputation is not counted (MFU convention). Only GEMMs and convolutions are counted by
FlopCounterMode (norms, softmax, GELU, AdamW are not: ~0.4% of a ViT-B step).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import Attention
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from canbench.config import Config

# Factory functions whose results become parameters / buffers: allocated on the meta device while a
# model is built for counting. Deliberately not torch.linspace / torch.tensor: the encoder reads
# drop-path rates back with ``.tolist()`` in its constructor, which a meta tensor cannot do.
_ALLOCATORS = frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full,
                         torch.rand, torch.randn})

# by_module keys -> the method's sub-module that owns them (sigma MLP is reported apart from the decoder)
PARTS = ("encoder", "decoder", "sigma_mlp", "head", "loss_and_other")


class _MetaAllocation(TorchFunctionMode):
    """Route parameter/buffer allocations without an explicit device to the meta device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ALLOCATORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_counting_model(cfg: Config, device: str | torch.device = "meta") -> nn.Module:
    """The method of ``cfg`` on ``device`` (default meta: shapes only, built in milliseconds), train mode.

    On a real device the parameters are initialised as in training (values do not change FLOPs).
    """
    from canbench.methods import build_method

    device = torch.device(device)
    if device.type == "meta":
        with _MetaAllocation():
            model = build_method(cfg)
        model = model.to("meta")  # the few buffers built from numpy (sin-cos positions) follow
    else:
        model = build_method(cfg).to(device)
    encoder = getattr(model, "encoder", None)
    if encoder is not None and getattr(encoder, "grad_checkpointing", False):
        encoder.grad_checkpointing = False  # model FLOPs: recomputation is not counted
    return model.train()


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[int]:
    """Switch every timm ``Attention`` in ``model`` to explicit matmuls; restores the flags on exit.

    Yields the number of attention modules switched (0 means the model has none, or not timm's).
    """
    mods = [m for m in model.modules() if isinstance(m, Attention)]
    saved = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = False
    try:
        yield len(mods)
    finally:
        for m, flag in zip(mods, saved):
            m.fused_attn = flag


def example_batch(cfg: Config, batch: int, device: str | torch.device = "meta") -> dict[str, torch.Tensor]:
    """A synthetic model input: views (V, batch, 3, S, S) ~ N(0, 1) and seeds (batch,) int64."""
    from canbench.methods import method_class

    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    s = cfg.model.img_size
    v = method_class(cfg.method.name).num_views
    views = torch.randn(v, batch, 3, s, s, device=device)
    return {"views": views, "seed": torch.arange(batch, dtype=torch.int64, device=device)}


def _parts(counts: dict[str, dict[Any, int]], root: str) -> dict[str, float]:
    """FlopCounterMode's per-module table -> totals of the PARTS (module names are ``Root.child...``)."""

    def total(name: str) -> float:
        # a module run through a method call (``encoder.forward_features``) has no row of its own:
        # sum its direct children instead (recursively, they may be in the same situation)
        if name in counts:
            return float(sum(counts[name].values()))
        depth = name.count(".") + 1
        children = {k.split(".")[depth] for k in counts if k.startswith(name + ".") and k.count(".") >= depth}
        return sum(total(f"{name}.{c}") for c in children)

    everything = total("Global")
    sigma = total(f"{root}.decoder.sigma_embed")
    out = {"encoder": total(f"{root}.encoder"), "decoder": total(f"{root}.decoder") - sigma,
           "sigma_mlp": sigma, "head": total(f"{root}.head")}
    out["loss_and_other"] = everything - sum(out.values())
    return out


def count_method_flops(cfg: Config, batch: int = 1, device: str | torch.device = "meta") -> dict[str, Any]:
    """FLOPs per image of one training step of ``cfg``'s method (2 FLOPs per multiply-add).

    Returns ``{"forward", "train", "backward"}`` (FLOPs per image; train = forward + backward, both
    measured), ``"by_module"`` (forward FLOPs per image of encoder, decoder, sigma_mlp, head,
    loss_and_other), and what was counted (method, arch, img_size, views, batch, counter).
    Runs on the meta device by default: no memory, about 0.1 s for vit_micro, about 2 s for ViT-L.
    """
    from canbench.methods import method_class

    t0 = time.perf_counter()
    model = build_counting_model(cfg, device)
    root = type(model).__name__
    inputs = example_batch(cfg, batch, device)
    with unfused_attention(model):
        with FlopCounterMode(display=False) as fwd_counter:
            model(inputs)
        fwd = fwd_counter.get_flop_counts()
        with FlopCounterMode(display=False) as train_counter:
            out = model(inputs)
            out["loss"].backward()
        train = float(train_counter.get_total_flops())
    fwd_parts = {k: v / batch for k, v in _parts(fwd, root).items()}
    forward = sum(fwd_parts.values())
    total = train / batch
    return {
        "forward": forward,
        "train": total,
        "backward": total - forward,
        # forward only: FlopCounterMode's module tracker misattributes backward FLOPs once a module
        # whose inputs need no gradient (the sigma MLP) is entered, so backward is reported in total only
        "by_module": {k: fwd_parts[k] for k in PARTS},
        "method": cfg.method.name, "arch": cfg.model.arch, "img_size": cfg.model.img_size,
        "patch_size": cfg.model.patch_size, "views": method_class(cfg.method.name).num_views, "batch": batch,
        "counter": f"torch.utils.flop_counter.FlopCounterMode on {torch.device(device).type}, "
                   "unfused attention, 2 FLOPs per multiply-add, train = forward + backward measured",
        "count_seconds": time.perf_counter() - t0,
    }


class _LossOnly(nn.Module):
    """Tensor-in / tensor-out wrapper for jit tracing: (views, seed) -> the method's loss."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        return self.method({"views": views, "seed": seed})["loss"]


def count_fvcore_flops(cfg: Config, batch: int = 1, model: nn.Module | None = None) -> dict[str, Any]:
    """Forward FLOPs per image with fvcore (its multiply-add count x 2), on real CPU tensors.

    fvcore traces with ``torch.jit`` and cannot trace meta tensors (the meta convolution kernel
    rejects traced shapes), so this runs the model: keep it to small models and batches in tests.
    Returns ``{"forward", "by_module": {part: forward}, "unsupported_ops": {op: count}}``.
    """
    from fvcore.nn import FlopCountAnalysis

    model = model if model is not None else build_counting_model(cfg, "cpu")
    inputs = example_batch(cfg, batch, "cpu")
    with unfused_attention(model), torch.no_grad():
        analysis = FlopCountAnalysis(_LossOnly(model), (inputs["views"], inputs["seed"]))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        macs = analysis.by_module()
        unsupported = dict(analysis.unsupported_ops())
    total = 2.0 * macs[""] / batch

    def part(name: str) -> float:
        return 2.0 * macs.get(f"method.{name}", 0) / batch

    sigma = part("decoder.sigma_embed")
    parts = {"encoder": part("encoder"), "decoder": part("decoder") - sigma, "sigma_mlp": sigma,
             "head": part("head")}
    parts["loss_and_other"] = total - sum(parts.values())
    return {"forward": total, "by_module": parts, "unsupported_ops": unsupported}


def method_flops_table(cfgs: dict[str, Config], batch: int = 1, with_fvcore: bool = False
                       ) -> list[dict[str, Any]]:
    """One row per method: counts of :func:`count_method_flops` (+ fvcore's forward) and ratios to CAN."""
    rows = []
    for cfg in cfgs.values():
        c = count_method_flops(cfg, batch=batch)
        row = {k: c[k] for k in ("method", "arch", "img_size", "patch_size", "views", "forward", "backward",
                                 "train", "by_module")}
        if with_fvcore:
            fv = count_fvcore_flops(copy.deepcopy(cfg), batch=max(batch, 2))
            row["fvcore_forward"] = fv["forward"]
            row["fvcore_rel_diff"] = fv["forward"] / c["forward"] - 1.0
        rows.append(row)
    ref = next((r for r in rows if r["method"] == "can"), None)
    for r in rows:
        r["train_ratio_to_can"] = r["train"] / ref["train"] if ref else None
        r["forward_ratio_to_can"] = r["forward"] / ref["forward"] if ref else None
    return rows


__all__ = ["PARTS", "build_counting_model", "count_fvcore_flops", "count_method_flops", "example_batch",
           "method_flops_table", "unfused_attention"]
