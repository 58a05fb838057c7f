"""Distribution-shift evaluation of a finetuned classifier (paper Sec. 4.4, docs/protocols.md §3.4).

Every set, on-disk or built-in, goes through the same path: (pre-transform) -> eval transform
(Resize(S / crop_pct, bicubic) + CenterCrop(S) + normalise) -> classifier logits -> the set's
label-space rule -> top-1 = correct / valid, counted over exact (unpadded) shards.
ImageNet-C (option) is scored as mCE: CE_c = mean_s err(c, s) / AlexNet_err(c), mCE = mean_c CE_c.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2 as T

from canbench.evaluation.features import make_eval_loader
from canbench.evaluation.shift_data import (
    ALEXNET_ERR,
    IMAGENET_C_CORRUPTIONS,
    ShiftDataError,
    ShiftSet,
    build_imagenet_c,
    build_shift_set,
)
from canbench.evaluation.transforms import DEFAULT_CROP_PCT, TransformedDataset, eval_transform
from canbench.runtime import all_reduce_sum_

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_set(model: nn.Module, shift_set: ShiftSet, transform: Any, *, batch_size: int = 128,
                 num_workers: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """``{"top1" (percent), "correct", "valid", "n"}`` of ``model`` on one shift set."""
    device = torch.device(device)
    tf = T.Compose([shift_set.pre_transform, transform]) if shift_set.pre_transform else transform
    loader = make_eval_loader(TransformedDataset(shift_set.dataset, tf), batch_size, num_workers,
                              pin_memory=device.type == "cuda")
    was = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct, valid, seen
    for images, targets in loader:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images.to(device, non_blocking=True))
        correct, valid = shift_set.rule.score(logits.float(), torch.as_tensor(targets).to(device))
        counts += torch.tensor([float(correct.sum()), float(valid.sum()), float(len(valid))],
                               dtype=torch.float64, device=device)
    model.train(was)
    all_reduce_sum_(counts)
    correct_n, valid_n, n = (float(c) for c in counts)
    if valid_n == 0:
        raise ShiftDataError(f"{shift_set.name}: no valid samples to score")
    return {"top1": 100.0 * correct_n / valid_n, "correct": correct_n, "valid": valid_n, "n": n}


def mce(errors: Mapping[str, Sequence[float]], alexnet: Mapping[str, float] = ALEXNET_ERR,
        require_all: bool = True) -> dict[str, Any]:
    """mCE (percent) from top-1 errors in [0, 1] per corruption and severity.

    CE_c = mean_s err(c, s) / alexnet[c] (the AlexNet values are per-corruption severity averages,
    so this equals sum_s err / sum_s err_AlexNet); mCE = mean_c CE_c, both x 100.
    """
    if require_all and set(errors) != set(IMAGENET_C_CORRUPTIONS):
        missing = sorted(set(IMAGENET_C_CORRUPTIONS) - set(errors))
        raise ValueError(f"mCE needs all 15 corruptions; missing {missing} (or pass require_all=False)")
    ce = {}
    for c, errs in errors.items():
        if c not in alexnet:
            raise ValueError(f"no AlexNet error for corruption {c!r}")
        if not errs:
            raise ValueError(f"corruption {c!r} has no severities")
        ce[c] = 100.0 * (sum(errs) / len(errs)) / alexnet[c]
    return {"mCE": sum(ce.values()) / len(ce), "CE": ce}


def evaluate_imagenet_c(model: nn.Module, root: str | Path, transform: Any, *,
                        corruptions: Sequence[str] = IMAGENET_C_CORRUPTIONS,
                        severities: Sequence[int] = (1, 2, 3, 4, 5), **kw: Any) -> dict[str, Any]:
    """Top-1 error per (corruption, severity) and the AlexNet-normalised mCE."""
    errors: dict[str, list[float]] = {}
    for c in corruptions:
        for s in severities:
            res = evaluate_set(model, build_imagenet_c(root, c, s), transform, **kw)
            errors.setdefault(c, []).append(1.0 - res["top1"] / 100.0)
    out = mce(errors, require_all=tuple(corruptions) == IMAGENET_C_CORRUPTIONS)
    out["errors"] = errors
    return out


def evaluate_shift(model: nn.Module, sets: Sequence[str], roots: Mapping[str, str | Path] | None = None, *,
                   img_size: int = 224, crop_pct: float = DEFAULT_CROP_PCT,
                   mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                   batch_size: int = 128, num_workers: int = 0, device: torch.device | str = "cpu",
                   set_options: Mapping[str, Any] | None = None,
                   details: dict[str, Any] | None = None) -> dict[str, float]:
    """Per-set top-1 (percent); ``imagenet_c`` gives ``imagenet_c_mce``. Fills ``details`` if given."""
    roots = dict(roots or {})
    opts = dict(set_options or {})
    tf = eval_transform(img_size, crop_pct, mean, std)
    kw = dict(batch_size=batch_size, num_workers=num_workers, device=device)
    # build every set first, so a missing root fails before any compute
    built: dict[str, ShiftSet] = {}
    for name in sets:
        if name == "imagenet_c":
            if "imagenet_c" not in roots:
                raise ShiftDataError("imagenet_c: no root given; expected <root>/<corruption>/<severity>/<wnid>/*")
            continue
        built[name] = build_shift_set(name, roots.get(name), **{"img_size": img_size, **opts})
    out: dict[str, float] = {}
    for name in sets:
        if name == "imagenet_c":
            res = evaluate_imagenet_c(model, roots["imagenet_c"], tf,
                                      corruptions=opts.get("corruptions", IMAGENET_C_CORRUPTIONS), **kw)
            out["imagenet_c_mce"] = res["mCE"]
            if details is not None:
                details["imagenet_c"] = res
            continue
        res = evaluate_set(model, built[name], tf, **kw)
        out[name] = res["top1"]
        log.info("shift %s: top1 %.2f (%d valid of %d)", name, res["top1"], res["valid"], res["n"])
        if details is not None:
            details[name] = {**res, "rule": built[name].rule.describe(), **built[name].info}
    return out


def run_shift(checkpoint: str | Path, sets: Sequence[str], roots: Mapping[str, str | Path] | None = None, *,
              device: torch.device | str = "cpu", batch_size: int = 128, num_workers: int = 0,
              set_options: Mapping[str, Any] | None = None,
              dataset: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Shift suite on a finetuned checkpoint: ``{"metrics", "details", "fingerprint_fields"}``.

    ``dataset`` (fingerprint) defaults to the list of ``sets``. Uses the image size / crop /
    normalisation stored in the checkpoint (the finetune eval's).
    """
    from canbench.evaluation.classifier import load_finetuned
    from canbench.evaluation.results import resize_crop_rule, suite_fingerprint_fields

    model, meta = load_finetuned(checkpoint, map_location="cpu")
    model.to(device)
    img_size = int(meta.get("img_size", 224))
    crop_pct = float(meta.get("crop_pct", DEFAULT_CROP_PCT))
    mean = tuple(meta.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(meta.get("std", IMAGENET_DEFAULT_STD))
    details: dict[str, Any] = {}
    metrics = evaluate_shift(model, sets, roots, img_size=img_size, crop_pct=crop_pct, mean=mean, std=std,
                             batch_size=batch_size, num_workers=num_workers, device=device,
                             set_options=set_options, details=details)
    rules = {k: v.get("rule") for k, v in details.items() if isinstance(v, dict) and "rule" in v}
    fp = suite_fingerprint_fields(
        pooling="avg+fc_norm", head_bn=False, mean=mean, std=std, img_size=img_size,
        resize_crop=resize_crop_rule(img_size, crop_pct), effective_batch=None, lr_scaling=None, epochs=None,
        metric="top1 (imagenet_c: mCE, AlexNet-normalised)", class_subset_rule=rules, seeds=None,
        dataset=list(sets) if dataset is None else dataset,
        extra={"sets": list(sets), "set_options": {k: str(v) for k, v in (set_options or {}).items()},
               "objectnet_border_px": details.get("objectnet", {}).get("border_px")})
    return {"metrics": metrics, "details": details, "fingerprint_fields": fp}
