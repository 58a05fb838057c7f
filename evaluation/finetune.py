"""End-to-end finetuning (paper Table 10; MAE ``main_finetune.py`` structure).

AdamW (0.9, 0.999), lr = 5e-4 * batch / 256, wd 0.005 (paper; MAE 0.05), layer-wise lr decay 0.65,
drop path 0.1, label smoothing 0.1, 5 warmup epochs + per-iteration cosine, RandAugment
``rand-m9-mstd0.5-inc1`` + RandomErasing 0.25 (timm ``create_transform``). Mixup / CutMix are off
by default (the paper lists none); ``mixup=0.8, cutmix=1.0`` turns on MAE's setting with timm
``Mixup`` + ``SoftTargetCrossEntropy``. The classifier is described in :mod:`.classifier`; the
finetuned checkpoint it writes is what the distribution-shift suite loads.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import AugmentOp
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from canbench.config import LR_SCALING, ConfigError, scaled_lr
from canbench.evaluation.classifier import classifier_from_encoder, save_finetuned
from canbench.evaluation.features import make_eval_loader
from canbench.evaluation.lr_decay import param_groups_lrd
from canbench.evaluation.recipes import FinetuneConfig
from canbench.evaluation.transforms import TransformedDataset, eval_transform, to_pil
from canbench.runtime import all_reduce_sum_, rank_world
from canbench.train.schedule import warmup_cosine

log = logging.getLogger(__name__)


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, also for 0 bits (all black, as Pillow < 11 did and TF RandAugment does).

    ``rand-m9-mstd0.5-inc1`` draws magnitude 10 (clipped) about 2% of the time, which
    PosterizeIncreasing turns into 0 bits; current Pillow raises ValueError for that.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _pillow_safe(tf: Any) -> Any:
    """Point this transform's own RandAugment posterize ops at :func:`_posterize_any_bits` (no global patch)."""
    for t in getattr(tf, "transforms", []):
        for op in getattr(t, "ops", []):
            if isinstance(op, AugmentOp) and op.name.startswith("Posterize"):
                op.aug_fn = _posterize_any_bits
    return tf


def train_transform(cfg: FinetuneConfig) -> Any:
    """timm create_transform (RandomResizedCrop, flip, RandAugment, RandomErasing) on PIL or uint8 input."""
    tf = create_transform(input_size=cfg.img_size, is_training=True, color_jitter=None,
                          auto_augment=cfg.auto_augment, interpolation="bicubic", re_prob=cfg.re_prob,
                          re_mode=cfg.re_mode, re_count=cfg.re_count, mean=cfg.mean, std=cfg.std)
    tf = _pillow_safe(tf)
    return lambda img: tf(to_pil(img))


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 (percent) over the loader's exact shards (counts summed over ranks)."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct1, correct5, n
    for images, y in loader:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images.to(device, non_blocking=True))
        y = torch.as_tensor(y).to(device).view(-1, 1)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        counts += torch.tensor([(top[:, :1] == y).sum().item(), (top == y).any(1).sum().item(), y.shape[0]],
                               dtype=torch.float64, device=device)
    all_reduce_sum_(counts)
    n = max(1.0, float(counts[2]))
    return {"top1": 100.0 * float(counts[0]) / n, "top5": 100.0 * float(counts[1]) / n}


def finetune_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over layer-decay groups; each step sets ``group["lr"] = lr(step) * group["lr_scale"]``."""
    groups = param_groups_lrd(model, cfg.weight_decay, cfg.layer_decay)
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas)


def _criterion(cfg: FinetuneConfig) -> nn.Module:
    if cfg.mixing:
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets itself
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()


def run_finetune(encoder: nn.Module, train_ds: Any, val_ds: Any, cfg: FinetuneConfig, num_classes: int,
                 device: torch.device | str = "cpu", out_path: str | Path | None = None,
                 dataset: str | None = None) -> dict[str, Any]:
    """Finetune a classifier built from ``encoder``; ``{"metrics", "history", "fingerprint_fields",
    "checkpoint"}``. Rank 0 writes the finetuned checkpoint to ``out_path`` (atomically) if given.

    Seeds the global ``random`` / NumPy / torch RNGs with ``cfg.seed + rank`` (augmentations use them).
    """
    from canbench.evaluation.results import resize_crop_rule, suite_fingerprint_fields

    cfg.validate()
    device = torch.device(device)
    rank, world = rank_world()
    if cfg.batch_size % world:
        raise ConfigError(f"finetune.batch_size={cfg.batch_size} is not divisible by the world size {world}")
    if cfg.mixing and (cfg.batch_size // world) % 2:
        raise ConfigError(f"finetune.batch_size={cfg.batch_size}: mixup / cutmix need an even per-rank batch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model, spec = classifier_from_encoder(encoder, num_classes, cfg.drop_path)
    # augmentation (timm / torchvision) draws from the global RNGs: seed them per rank, as MAE's main does
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)
    model.to(device)
    opt = finetune_optimizer(model, cfg)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    ds = TransformedDataset(train_ds, train_transform(cfg))
    sampler: Any = (DistributedSampler(ds, world, rank, shuffle=True, seed=cfg.seed, drop_last=True) if world > 1
                    else RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed)))
    loader = DataLoader(ds, batch_size=cfg.batch_size // world, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ConfigError(f"finetune.batch_size={cfg.batch_size} exceeds the {len(train_ds)} training samples")
    val_loader = make_eval_loader(TransformedDataset(val_ds, eval_transform(cfg.img_size, cfg.crop_pct, cfg.mean,
                                                                            cfg.std)),
                                  cfg.eval_batch_size, cfg.num_workers)
    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                   switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                   num_classes=num_classes) if cfg.mixing else None)
    criterion = _criterion(cfg)
    peak = scaled_lr(cfg.base_lr, cfg.batch_size)
    spe = len(loader)
    total = int(round(cfg.epochs * spe))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    n_epochs = -(-total // spe)
    history: list[dict[str, Any]] = []
    step, lr = 0, 0.0
    for epoch in range(n_epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        ddp.train()
        loss_sum, n_b = 0.0, 0
        for images, y in loader:
            if step >= total:
                break
            lr = warmup_cosine(step / spe, cfg.epochs, cfg.warmup_epochs, peak, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            images, y = images.to(device, non_blocking=True), torch.as_tensor(y).to(device)
            if mixup is not None:
                images, y = mixup(images, y)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(ddp(images).float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite finetune loss {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            loss_sum += float(loss.detach())
            n_b += 1
            step += 1
        if epoch == n_epochs - 1 or (epoch + 1) % cfg.eval_every == 0:
            rec = {"epoch": epoch + 1, "step": step, "lr": lr, "loss": loss_sum / max(1, n_b),
                   **evaluate_classifier(model, val_loader, device)}
            history.append(rec)
            log.info("finetune %s", rec)
    final, best = history[-1], max(history, key=lambda r: r["top1"])
    metrics = {"top1": final["top1"], "top5": final["top5"], "top1_best": best["top1"],
               "best_epoch": best["epoch"], "steps": step, "final_loss": final["loss"], "peak_lr": peak}
    fields = suite_fingerprint_fields(
        pooling="avg+fc_norm", head_bn=False, mean=cfg.mean, std=cfg.std, img_size=cfg.img_size,
        resize_crop=resize_crop_rule(cfg.img_size, cfg.crop_pct), effective_batch=cfg.batch_size,
        lr_scaling=LR_SCALING, epochs=cfg.epochs, metric="last_epoch (top1_best: best epoch)",
        class_subset_rule="none", seeds=[cfg.seed], dataset=dataset,
        extra={"optimizer": "adamw", "betas": list(cfg.betas), "base_lr": cfg.base_lr, "weight_decay": cfg.weight_decay,
               "layer_decay": cfg.layer_decay, "drop_path": cfg.drop_path, "label_smoothing": cfg.label_smoothing,
               "auto_augment": cfg.auto_augment, "re_prob": cfg.re_prob, "mixup": cfg.mixup, "cutmix": cfg.cutmix,
               "warmup_epochs": cfg.warmup_epochs, "min_lr": cfg.min_lr, "max_steps": cfg.max_steps,
               "final_norm": "dropped (MAE); fc_norm fresh", "num_classes": num_classes})
    ckpt = None
    if out_path is not None and rank == 0:
        ckpt = str(save_finetuned(out_path, model, spec, step=step, epoch=n_epochs, metrics=metrics,
                                  config=_plain_config(cfg), img_size=cfg.img_size, crop_pct=cfg.crop_pct,
                                  mean=list(cfg.mean), std=list(cfg.std)))
    return {"metrics": metrics, "history": history, "fingerprint_fields": fields, "checkpoint": ckpt}


def _plain_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The config as plain types (lists for tuples) so the checkpoint loads with weights_only=True."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
