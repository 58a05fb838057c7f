"""Linear probe (paper Table 11 = MAE ``main_linprobe.py``) on a frozen encoder.

Head: BatchNorm1d(D, affine=False, eps=1e-6) + Linear (trunc_normal std 0.01, bias 0), trained with
LARS (momentum 0.9, trust 0.001, wd 0), lr = base_lr * batch / 256 with 10 warmup epochs and a
per-iteration cosine to 0. Two modes:

- ``full`` (protocol): every step runs the frozen encoder on RandomResizedCrop(bicubic) + flip views.
- ``cached_features`` (cheap, small scales): features of the eval-transformed train images are
  extracted once and the head is trained on them without augmentation. Recorded in the fingerprint.

Validation features are deterministic (frozen encoder, eval transform), so they are extracted once.
The reported metric is the last-epoch top-1; the best evaluated epoch is an extra, ``top1_best``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from canbench.config import LR_SCALING, ConfigError, scaled_lr
from canbench.evaluation.features import encoder_pooling, extract_features, make_eval_loader
from canbench.evaluation.lars import LARS
from canbench.evaluation.recipes import LinearProbeConfig
from canbench.evaluation.transforms import TransformedDataset, eval_transform, linear_train_transform
from canbench.runtime import rank_world
from canbench.train.schedule import warmup_cosine

log = logging.getLogger(__name__)

class LinearHead(nn.Module):
    """BatchNorm1d(D, affine=False, eps=1e-6) + Linear(D, C); (N, D) -> logits (N, C)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))


def _seeded_head(dim: int, num_classes: int, seed: int) -> LinearHead:
    """The head initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LinearHead(dim, num_classes)


@torch.no_grad()
def evaluate_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor,
                  batch: int = 4096) -> dict[str, float]:
    """Top-1 / top-5 (percent) of ``head`` on features (N, D); BN in eval mode (running stats)."""
    was = head.training
    head.eval()
    correct1 = correct5 = 0
    for i in range(0, feats.shape[0], batch):
        logits = head(feats[i:i + batch])
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        y = labels[i:i + batch].view(-1, 1)
        correct1 += int((top[:, :1] == y).sum())
        correct5 += int((top == y).any(dim=1).sum())
    head.train(was)
    n = max(1, feats.shape[0])
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n}


def _sync_head(head: nn.Module, grads: bool) -> None:
    """Average head gradients over ranks (grads) or broadcast rank 0's BN statistics (buffers)."""
    _, world = rank_world()
    if world == 1:
        return
    if grads:
        for p in head.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
    else:
        for b in head.buffers():
            dist.broadcast(b, 0)


def train_probe(head: LinearHead, batches_per_epoch: int, next_batch: Any, val: tuple[torch.Tensor, torch.Tensor],
                cfg: LinearProbeConfig, device: torch.device, distributed_grads: bool) -> dict[str, Any]:
    """The LARS / warmup-cosine loop shared by both modes; ``next_batch(epoch)`` yields (feats, labels)."""
    opt = LARS(head.parameters(), lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
               trust_coefficient=cfg.trust_coefficient)
    peak = scaled_lr(cfg.base_lr, cfg.batch_size)
    total = int(round(cfg.epochs * batches_per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    n_epochs = -(-total // batches_per_epoch)  # ceil
    val_x, val_y = val[0].to(device), val[1].to(device)
    history, step, loss_sum = [], 0, 0.0
    for epoch in range(n_epochs):
        head.train()
        loss_sum, n_batches = 0.0, 0
        for x, y in next_batch(epoch):
            if step >= total:
                break
            lr = warmup_cosine(step / batches_per_epoch, cfg.epochs, cfg.warmup_epochs, peak, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = nn.functional.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if distributed_grads:
                _sync_head(head, grads=True)
            opt.step()
            loss_sum += float(loss.detach())
            n_batches += 1
            step += 1
        last = epoch == n_epochs - 1
        if last or (epoch + 1) % cfg.eval_every == 0:
            if distributed_grads:
                _sync_head(head, grads=False)
            acc = evaluate_head(head, val_x, val_y)
            rec = {"epoch": epoch + 1, "step": step, "lr": lr, "loss": loss_sum / max(1, n_batches), **acc}
            history.append(rec)
            log.info("linear probe %s", rec)
    final = history[-1]
    best = max(history, key=lambda r: r["top1"])
    metrics = {"top1": final["top1"], "top5": final["top5"], "top1_best": best["top1"],
               "best_epoch": best["epoch"], "epochs_run": n_epochs, "steps": step, "peak_lr": peak}
    return {"metrics": metrics, "history": history}


def linear_probe_on_features(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                             val_labels: torch.Tensor, cfg: LinearProbeConfig, num_classes: int | None = None,
                             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Cached-features probe: shuffled mini-batches (drop_last) of fixed features, no augmentation."""
    cfg.validate()
    device = torch.device(device)
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(val_labels.max()))) + 1
    n = train_feats.shape[0]
    if cfg.batch_size > n:
        raise ConfigError(f"linear.batch_size={cfg.batch_size} exceeds the {n} training samples")
    steps_per_epoch = n // cfg.batch_size
    x_all, y_all = train_feats.float().to(device), train_labels.long().to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    head = _seeded_head(train_feats.shape[1], num_classes, cfg.seed).to(device)

    def next_batch(epoch: int):
        order = torch.randperm(n, generator=g).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            yield x_all[idx], y_all[idx]

    # every rank holds all features and trains the same head with the same seed: no communication
    return train_probe(head, steps_per_epoch, next_batch, (val_feats.float(), val_labels.long()), cfg, device,
                       distributed_grads=False)


def _full_mode(encoder: nn.Module, train_ds: Any, val: tuple[torch.Tensor, torch.Tensor],
               cfg: LinearProbeConfig, num_classes: int, device: torch.device) -> dict[str, Any]:
    rank, world = rank_world()
    if cfg.batch_size % world:
        raise ConfigError(f"linear.batch_size={cfg.batch_size} is not divisible by the world size {world}")
    per_rank = cfg.batch_size // world
    ds = TransformedDataset(train_ds, linear_train_transform(cfg.img_size, cfg.mean, cfg.std))
    if world > 1:
        sampler: Any = DistributedSampler(ds, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed))
    loader = DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                        pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ConfigError(f"linear.batch_size={cfg.batch_size} exceeds the {len(train_ds)} training samples")
    head = _seeded_head(int(encoder.embed_dim), num_classes, cfg.seed).to(device)
    encoder.eval()

    def next_batch(epoch: int):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        for images, y in loader:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                feats = encoder.forward_head(encoder.forward_features(images.to(device, non_blocking=True)),
                                             pre_logits=True)
            yield feats.float(), torch.as_tensor(y).long().to(device)

    return train_probe(head, len(loader), next_batch, val, cfg, device, distributed_grads=True)


def _probe(encoder: nn.Module, train_ds: Any, val_ds: Any, cfg: LinearProbeConfig, device: torch.device,
           num_classes: int | None, features: dict[str, Any] | None = None) -> dict[str, Any]:
    """Extract validation (and, cached mode, training) features; train and evaluate the head."""
    tf = eval_transform(cfg.img_size, cfg.crop_pct, cfg.mean, cfg.std)
    features = features or {}
    val = features.get("val") or extract_features(
        encoder, make_eval_loader(TransformedDataset(val_ds, tf), cfg.eval_batch_size, cfg.num_workers), device)
    if cfg.mode == "cached_features":
        train = features.get("train") or extract_features(
            encoder, make_eval_loader(TransformedDataset(train_ds, tf), cfg.eval_batch_size, cfg.num_workers),
            device)
        if num_classes is None:
            num_classes = int(max(int(train[1].max()), int(val[1].max()))) + 1
        out = linear_probe_on_features(*train, *val, cfg, num_classes, device)
    else:
        if num_classes is None:
            from canbench.evaluation.fewshot import dataset_labels

            num_classes = int(max(int(dataset_labels(train_ds).max()), int(val[1].max()))) + 1
        out = _full_mode(encoder, train_ds, val, cfg, num_classes, device)
    out["metrics"]["num_classes"] = num_classes
    return out


def run_linear(encoder: nn.Module, train_ds: Any, val_ds: Any, cfg: LinearProbeConfig,
               device: torch.device | str = "cpu", num_classes: int | None = None,
               dataset: str | None = None,
               features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Linear-probe suite: ``{"metrics", "history", "fingerprint_fields"}`` (accuracies in percent).

    The encoder is frozen (``requires_grad`` off) for the run and its flags restored afterwards.
    ``features``: ``{"train": (feats, labels), "val": ...}`` already extracted with the eval transform
    of ``cfg`` (train is used in ``cached_features`` mode only); those splits are not extracted again.
    """
    from canbench.evaluation.results import resize_crop_rule, suite_fingerprint_fields

    cfg.validate()
    device = torch.device(device)
    flags = [p.requires_grad for p in encoder.parameters()]
    for p in encoder.parameters():  # frozen for the probe; restored afterwards
        p.requires_grad_(False)
    try:
        out = _probe(encoder, train_ds, val_ds, cfg, device, num_classes, features)
    finally:
        for p, f in zip(encoder.parameters(), flags):
            p.requires_grad_(f)
    num_classes = out["metrics"]["num_classes"]
    train_rule = "none (cached eval-transform features)" if cfg.mode == "cached_features" else \
        "RandomResizedCrop(bicubic)+hflip"
    out["fingerprint_fields"] = suite_fingerprint_fields(
        pooling=encoder_pooling(encoder), head_bn=True, mean=cfg.mean, std=cfg.std, img_size=cfg.img_size,
        resize_crop=resize_crop_rule(cfg.img_size, cfg.crop_pct), effective_batch=cfg.batch_size,
        lr_scaling=LR_SCALING, epochs=cfg.epochs, metric="last_epoch (top1_best: best epoch)",
        class_subset_rule="none", seeds=[cfg.seed], dataset=dataset,
        extra={"mode": cfg.mode, "train_aug": train_rule, "optimizer": "lars", "base_lr": cfg.base_lr,
               "warmup_epochs": cfg.warmup_epochs, "weight_decay": cfg.weight_decay,
               "max_steps": cfg.max_steps, "num_classes": num_classes})
    return out


__all__: Sequence[str] = ("LinearHead", "evaluate_head",
                          "linear_probe_on_features", "run_linear", "train_probe")
