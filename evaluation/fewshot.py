"""Few-shot linear evaluation on frozen features (docs/protocols.md §3.3).

Default: closed-form regularised least squares, as big_vision ``evaluators/fewshot_lsr.py``:
standardise with the few-shot subset's mean / std (+1e-5), append a constant feature 100 as bias,
targets 2 * onehot - 1, W = (X^T X + l2 I)^-1 X^T Y (primal, N >= D) or X^T (X X^T + l2 I)^-1 Y
(dual, N < D), l2 = 2^10; accuracy = mean(argmax(X_test W) == y) over the whole test split.
Subsets: per seed, rng = numpy default_rng(seed), per class (ascending label order) a permutation
of that class's indices, first k taken, so the k-shot subset contains the k'-shot one for k' < k. A class with
fewer than k training images gives all it has (as big_vision's slicing does: Flowers102 has 10 per class, so its
25-shot subset is its 10-shot one); the shots actually used (the smallest class's) are recorded.
Option: a trained linear head on the same features (paper App. C: lr 0.01, 2500 steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from canbench.evaluation.recipes import LinearHeadConfig

SHOTS = (1, 5, 10, 25)
SEEDS = (0, 1, 2)
LSR_L2 = 2.0 ** 10
BIAS_CONSTANT = 100.0
STD_EPS = 1e-5


# ---- subsets -----------------------------------------------------------------------------------
def sample_fewshot_indices(labels: np.ndarray | Sequence[int], shots: int, seed: int) -> np.ndarray:
    """Indices of a ``shots``-per-class subset: per class a default_rng(seed) permutation, first k (all of a class
    with fewer)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if shots < 1:
        raise ValueError(f"shots={shots} must be >= 1")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):  # ascending class order: the rng draws happen in a fixed order
        idx = np.flatnonzero(labels == c)
        out.append(rng.permutation(idx)[:shots])
    return np.concatenate(out)


def actual_shots(labels: np.ndarray | Sequence[int], indices: np.ndarray) -> int:
    """The shots a subset really has: its smallest class's count (classes of ``labels``)."""
    labels = np.asarray(labels)
    taken = labels[np.asarray(indices)]
    return int(min(np.sum(taken == c) for c in np.unique(labels)))


def fewshot_subsets(labels: np.ndarray | Sequence[int], shots: Sequence[int] = SHOTS,
                    seeds: Sequence[int] = SEEDS) -> dict[int, dict[int, np.ndarray]]:
    """``{shots: {seed: indices}}`` for every (shots, seed) pair."""
    return {k: {s: sample_fewshot_indices(labels, k, s) for s in seeds} for k in shots}


# ---- closed-form least squares -----------------------------------------------------------------
@dataclass
class LSRModel:
    """Standardisation statistics and weights (D + 1, C) of the least-squares classifier."""

    mean: np.ndarray  # (1, D)
    std: np.ndarray  # (1, D), already + eps
    weights: np.ndarray  # (D + 1, C), last row multiplies the constant bias feature

    def design(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, D + 1) standardised features with the bias constant appended."""
        x = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        return np.concatenate([x, np.full((x.shape[0], 1), BIAS_CONSTANT)], axis=1)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> class scores (N, C)."""
        return self.design(x) @ self.weights


def lsr_solve(x: np.ndarray, y: np.ndarray, l2: float = LSR_L2, form: str = "auto") -> np.ndarray:
    """Ridge solution W (D, C) for design x (N, D), targets y (N, C); primal if N >= D else dual."""
    n, d = x.shape
    if form == "auto":
        form = "primal" if n >= d else "dual"
    if form == "primal":
        return np.linalg.solve(x.T @ x + l2 * np.eye(d), x.T @ y)  # (D, D) system
    if form == "dual":
        return x.T @ np.linalg.solve(x @ x.T + l2 * np.eye(n), y)  # (N, N) system
    raise ValueError(f"form={form!r} must be 'auto', 'primal' or 'dual'")


def lsr_fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = LSR_L2,
            form: str = "auto") -> LSRModel:
    """Fit the big_vision few-shot least-squares classifier on features x (N, D), labels y (N,)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (N, D) and y (N,), got {x.shape} and {y.shape}")
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + STD_EPS  # population std, as jnp.std
    model = LSRModel(mean=mean, std=std, weights=np.zeros((x.shape[1] + 1, num_classes)))
    targets = 2.0 * np.eye(num_classes)[y] - 1.0  # (N, C) in {-1, 1}
    model.weights = lsr_solve(model.design(x), targets, l2, form)
    return model


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent of argmax(scores) against labels."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("accuracy of an empty test split is undefined")
    return float(100.0 * np.mean(np.argmax(scores, axis=1) == y))


# ---- trained linear head (option) --------------------------------------------------------------
def train_linear_head(x: np.ndarray, y: np.ndarray, num_classes: int,
                      cfg: LinearHeadConfig | None = None) -> nn.Linear:
    """SGD-trained zero-initialised linear head on fixed features x (N, D), labels y (N,)."""
    cfg = cfg or LinearHeadConfig()
    if cfg.schedule != "cosine":
        raise ValueError(f"LinearHeadConfig.schedule={cfg.schedule!r}: only 'cosine' is implemented")
    g = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    head = nn.Linear(xt.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    batch = min(cfg.batch_size, xt.shape[0])
    order = torch.randperm(xt.shape[0], generator=g)
    pos = 0
    for step in range(cfg.steps):
        if pos + batch > len(order):  # reshuffle each pass over the subset
            order, pos = torch.randperm(xt.shape[0], generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))
        loss = nn.functional.cross_entropy(head(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            nn.utils.clip_grad_norm_(head.parameters(), cfg.clip_grad)
        opt.step()
    return head


# ---- the suite on features -----------------------------------------------------------------------
def _as_numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def fewshot_eval(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any, *,
                 shots: Sequence[int] = SHOTS, seeds: Sequence[int] = SEEDS, head: str = "lsr",
                 num_classes: int | None = None, l2: float = LSR_L2,
                 linear_cfg: LinearHeadConfig | None = None,
                 subsets: Mapping[int, Mapping[int, np.ndarray]] | None = None) -> dict[str, float]:
    """Few-shot top-1 (percent) per shot: ``{k}shot_mean``, ``{k}shot_std`` (ddof 1), ``{k}shot_seed{s}``, and
    ``{k}shot_actual`` (the shots of the smallest class: fewer than k when a class has fewer images).

    ``subsets`` (``{shots: {seed: indices into train_feats}}``) overrides sampling, for callers that
    sampled on a larger label array and extracted features only for the union of the subsets.
    """
    xtr, ytr = _as_numpy(train_feats).astype(np.float64), _as_numpy(train_labels).astype(np.int64)
    xte, yte = _as_numpy(test_feats).astype(np.float64), _as_numpy(test_labels).astype(np.int64)
    if head not in ("lsr", "linear"):
        raise ValueError(f"head={head!r} must be 'lsr' (closed form, default) or 'linear' (trained)")
    if num_classes is None:
        num_classes = int(max(ytr.max(), yte.max())) + 1
    if subsets is None:
        subsets = fewshot_subsets(ytr, shots, seeds)
    out: dict[str, float] = {}
    for k in shots:
        accs = []
        out[f"{k}shot_actual"] = float(min(actual_shots(ytr, subsets[k][s]) for s in seeds))
        for s in seeds:
            idx = np.asarray(subsets[k][s])
            if head == "lsr":
                acc = accuracy(lsr_fit(xtr[idx], ytr[idx], num_classes, l2).scores(xte), yte)
            else:
                cfg = LinearHeadConfig(**{**asdict(linear_cfg or LinearHeadConfig()), "seed": int(s)})
                lin = train_linear_head(xtr[idx], ytr[idx], num_classes, cfg)
                with torch.no_grad():
                    acc = accuracy(lin(torch.as_tensor(xte, dtype=torch.float32)).numpy(), yte)
            out[f"{k}shot_seed{s}"] = acc
            accs.append(acc)
        out[f"{k}shot_mean"] = float(np.mean(accs))
        out[f"{k}shot_std"] = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    return out


def dataset_labels(dataset: Any) -> np.ndarray:
    """All labels of a dataset: its ``targets`` / ``_labels`` attribute if any, else by iterating."""
    for attr in ("targets", "_labels", "labels"):
        lab = getattr(dataset, attr, None)
        if lab is not None and len(lab) == len(dataset):
            return np.asarray(lab, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def run_fewshot(encoder: nn.Module, train_ds: Any, test_ds: Any, *, img_size: int,
                device: torch.device | str = "cpu", shots: Sequence[int] = SHOTS,
                seeds: Sequence[int] = SEEDS, head: str = "lsr", num_classes: int | None = None,
                batch_size: int = 256, num_workers: int = 0, crop_pct: float = 224 / 256,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                linear_cfg: LinearHeadConfig | None = None, dataset: str | None = None) -> dict[str, Any]:
    """Few-shot suite: sample subsets on the train labels, embed only their union and the test split."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torch.utils.data import Subset

    from canbench.evaluation.features import encoder_pooling, extract_features, make_eval_loader
    from canbench.evaluation.results import resize_crop_rule, suite_fingerprint_fields
    from canbench.evaluation.transforms import TransformedDataset, eval_transform

    mean = tuple(mean or IMAGENET_DEFAULT_MEAN)
    std = tuple(std or IMAGENET_DEFAULT_STD)
    tf = eval_transform(img_size, crop_pct, mean, std)
    labels = dataset_labels(train_ds)
    subsets = fewshot_subsets(labels, shots, seeds)
    union = np.unique(np.concatenate([i for per_seed in subsets.values() for i in per_seed.values()]))
    local = {k: {s: np.searchsorted(union, i) for s, i in per_seed.items()} for k, per_seed in subsets.items()}
    tr = make_eval_loader(TransformedDataset(Subset(train_ds, union.tolist()), tf), batch_size, num_workers)
    te = make_eval_loader(TransformedDataset(test_ds, tf), batch_size, num_workers)
    ftr, ytr = extract_features(encoder, tr, device)
    fte, yte = extract_features(encoder, te, device)
    if num_classes is None:
        num_classes = int(max(labels.max(), int(yte.max()))) + 1
    metrics = fewshot_eval(ftr, ytr, fte, yte, shots=shots, seeds=seeds, head=head, num_classes=num_classes,
                           linear_cfg=linear_cfg, subsets=local)
    extra: dict[str, Any] = {"head": head, "shots": list(shots), "sampling": "default_rng(seed) per-class perm"}
    if head == "lsr":
        extra.update(l2=LSR_L2, bias_constant=BIAS_CONSTANT, standardise="subset mean/std + 1e-5")
    else:
        extra.update(linear_head=asdict(linear_cfg or LinearHeadConfig()))
    fp = suite_fingerprint_fields(
        pooling=encoder_pooling(encoder), head_bn=False, mean=mean, std=std, img_size=img_size,
        resize_crop=resize_crop_rule(img_size, crop_pct), effective_batch=None, lr_scaling=None,
        epochs=None, metric="final", class_subset_rule="none", seeds=list(seeds), dataset=dataset, extra=extra)
    return {"metrics": metrics, "fingerprint_fields": fp}
