"""Cosine-similarity weighted kNN classifier (DINO ``eval_knn.knn_classifier``), as a pure function.

For each test feature: cosine similarity to every train feature, the k most similar neighbours,
each votes for its label with weight exp(sim / T), votes are summed per class, the top class wins.
Defaults k = 20, T = 0.07. DINO splits the test set into ``num_test // 100`` sized chunks, which is
a zero step (a crash) for fewer than 100 test samples; here the chunk size is at least one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from canbench.evaluation.features import extract_features, make_eval_loader
from canbench.evaluation.transforms import DEFAULT_CROP_PCT, TransformedDataset, eval_transform


def knn_predict_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                       num_classes: int, k: int = 20, temperature: float = 0.07,
                       num_chunks: int = 100) -> torch.Tensor:
    """Class vote totals (N_test, C): sum over the k nearest (cosine) neighbours of exp(sim / T).

    train_feats (N_train, D), train_labels (N_train,) int in [0, C), test_feats (N_test, D). Features
    are L2-normalised here. ``num_chunks`` bounds memory: chunk size = ceil(N_test / num_chunks) >= 1.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"feature shapes do not match: train {tuple(train_feats.shape)}, "
                         f"test {tuple(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"train_labels shape {tuple(train_labels.shape)} != ({train_feats.shape[0]},)")
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    if k < 1 or temperature <= 0 or num_chunks < 1:
        raise ValueError(f"k={k}, temperature={temperature}, num_chunks={num_chunks} must be positive")
    train_labels = train_labels.long()
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise ValueError(f"train labels outside [0, {num_classes}): min {int(train_labels.min())}, "
                         f"max {int(train_labels.max())}")
    k = min(k, train_feats.shape[0])
    train_t = F.normalize(train_feats.float(), dim=1).t()  # (D, N_train)
    test_n = F.normalize(test_feats.float(), dim=1)  # (N_test, D)
    n_test = test_n.shape[0]
    chunk = max(1, math.ceil(n_test / num_chunks))
    scores = torch.zeros(n_test, num_classes, dtype=torch.float32, device=test_n.device)
    for start in range(0, n_test, chunk):
        sim = test_n[start:start + chunk] @ train_t  # (b, N_train)
        top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)  # (b, k)
        neighbour_labels = train_labels[top_idx]  # (b, k)
        weights = (top_sim / temperature).exp()  # (b, k)
        # votes summed per class: scatter-add each neighbour's weight into its label's column
        scores[start:start + chunk].scatter_add_(1, neighbour_labels, weights)
    return scores


def knn_classifier(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                   test_labels: torch.Tensor, num_classes: int | None = None, k: int = 20,
                   temperature: float = 0.07, num_chunks: int = 100) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent, 0-100) of the weighted kNN classifier on the test features."""
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    if test_labels.shape != (test_feats.shape[0],):
        raise ValueError(f"test_labels shape {tuple(test_labels.shape)} != ({test_feats.shape[0]},)")
    if test_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one test feature")
    scores = knn_predict_scores(train_feats, train_labels, test_feats, num_classes, k, temperature, num_chunks)
    targets = test_labels.long().to(scores.device)
    order = scores.argsort(dim=1, descending=True, stable=True)  # ties: lower class index first
    correct = order.eq(targets.view(-1, 1))
    n = float(targets.numel())
    return {"top1": 100.0 * correct[:, :1].sum().item() / n,
            "top5": 100.0 * correct[:, : min(5, num_classes)].sum().item() / n}


def run_knn(encoder: torch.nn.Module, train_ds: Any, val_ds: Any, *, img_size: int,
            device: torch.device | str = "cpu", k: int = 20, temperature: float = 0.07,
            batch_size: int = 256, num_workers: int = 0, crop_pct: float = DEFAULT_CROP_PCT,
            mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
            num_classes: int | None = None, dataset: str | None = None,
            features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, Any]:
    """kNN suite: extract features of both splits (eval transform), classify; metrics + fingerprint fields.

    ``features``: ``{"train": (feats, labels), "val": ...}`` already extracted with this eval transform
    (e.g. shared with the cached-features linear probe); those splits are not extracted again.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from canbench.evaluation.features import encoder_pooling
    from canbench.evaluation.results import resize_crop_rule, suite_fingerprint_fields

    mean = tuple(mean or IMAGENET_DEFAULT_MEAN)
    std = tuple(std or IMAGENET_DEFAULT_STD)
    tf = eval_transform(img_size, crop_pct, mean, std)
    feats = dict(features or {})
    for split, ds in (("train", train_ds), ("val", val_ds)):
        if split in feats:
            continue
        loader = make_eval_loader(TransformedDataset(ds, tf), batch_size, num_workers)
        feats[split] = extract_features(encoder, loader, device)
    metrics = knn_classifier(*feats["train"], *feats["val"], num_classes=num_classes, k=k,
                             temperature=temperature)
    metrics.update(n_train=int(feats["train"][0].shape[0]), n_val=int(feats["val"][0].shape[0]))
    fp = suite_fingerprint_fields(
        pooling=encoder_pooling(encoder), head_bn=False, mean=mean, std=std, img_size=img_size,
        resize_crop=resize_crop_rule(img_size, crop_pct), effective_batch=None,
        lr_scaling=None, epochs=None, metric="final", class_subset_rule="none", seeds=None, dataset=dataset,
        extra={"k": k, "temperature": temperature, "feature_norm": "l2", "vote_weight": "exp(sim/T)"})
    return {"metrics": metrics, "fingerprint_fields": fp}
