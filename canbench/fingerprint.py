"""Protocol fingerprints and provenance (docs/reports.md): every result records how it was produced.

A *recipe fingerprint* is built from the config schema, not from a hand-picked list: every field of the
training config is result-affecting unless :data:`NEUTRAL_TRAIN_KEYS` names it (with the reason) or it
varies per run by design (:data:`PER_RUN_KEYS`, the seed). The evaluation recipes do the same with
:data:`canbench.evaluation.recipes.NEUTRAL_EVAL_KEYS`. A test walks every schema field and fails when a
field is in neither place, so a new config key can never be silently left out.

*Provenance* (code version and dirty flag, library versions, device, world size, batch per device,
accumulation, total batch, negatives per anchor) is recorded next to every result and shown when two
results differ; it never makes two results incomparable on its own (:data:`INFORMATIONAL`).
:func:`mismatches` says which fields of two fingerprints differ, so tables and checks can say why not.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import canbench
from canbench.config import flatten

# Training config keys that never change a result; each with the reason (docs/reports.md lists them).
NEUTRAL_TRAIN_KEYS: dict[str, str] = {
    "model.grad_checkpointing": "recomputes activations in the backward pass: the same numbers, less memory",
    "data.root": "a path; what it holds is compared as the data identity (data.identity)",
    "data.dataset": "the reader (imagefolder / imagenet / jft ...); what it reads is compared as the data identity",
    "data.num_workers": "loader parallelism; the data order and views are pure functions of (seed, step)",
    "data.pin_memory": "host-memory pinning",
    "data.persistent_workers": "loader worker lifetime",
    "data.prefetch_factor": "loader look-ahead",
    "data.gpu_augment": "the same augmentation decoded and applied on the device (tested against the CPU path)",
    "data.pipeline": "the same augmentation from the same parameters in a DALI pipeline (tested against the CPU "
                     "path)",
    "data.max_bad_images": "a stop threshold; which files were unreadable (and replaced) is in summary.json",
    "train.device": "where the same computation runs",
    "train.precision": "float precision of the same computation (bf16 autocast on GPU, fp32 on CPU); recorded",
    "train.compile": "torch.compile of the same model (tested equal to eager)",
    "train.log_every": "logging cadence",
    "train.ckpt_every": "checkpoint cadence (resume is exact)",
    "train.keep_checkpoints": "how many old checkpoints are kept",
    "train.ckpt_minutes": "wall-clock checkpoint cadence (resume is exact)",
    "train.threads": "CPU threads: changes the order of float sums (bitwise, not statistically); recorded in "
                     "the provenance",
    "train.count_flops": "whether FLOPs are counted into summary.json",
    "train.wandb": "whether the same scalars also go to Weights & Biases",
}
PER_RUN_KEYS: dict[str, str] = {"train.seed": "seeds are what a cell aggregates over, never matched"}
RECIPE_SECTIONS = ("model", "method", "data", "optim", "train")  # config.extra is the run record, not the recipe

# Fields that never make two results incomparable on their own (they are recorded, not matched).
INFORMATIONAL = frozenset({"code_version", "commit", "dirty", "torch", "torchvision", "timm", "device_type",
                           "device_count", "device_name", "created", "world_size", "per_device_batch",
                           "accum_steps", "total_batch", "negatives_per_anchor", "checkpoint_step", "precision",
                           "threads"})


def train_fingerprint(cfg: dict[str, Any]) -> dict[str, Any]:
    """The result-affecting keys of a training config mapping (``Config.to_dict()`` or a config.yaml), dotted:
    ``{"model.arch": "vit_base", "optim.base_lr": 0.00025, ...}``. Keys a config written by an older version
    lacks are None, so they read as "not recorded" rather than passing silently."""
    from canbench.config import Config

    want = [k for k in flatten({s: Config().to_dict()[s] for s in RECIPE_SECTIONS})
            if k not in NEUTRAL_TRAIN_KEYS and k not in PER_RUN_KEYS]
    have = flatten({s: cfg.get(s) or {} for s in RECIPE_SECTIONS})
    return {k: have.get(k) for k in want}


def result_affecting_train_keys() -> list[str]:
    """Every training key the recipe fingerprint compares."""
    from canbench.config import Config

    return sorted(train_fingerprint(Config().to_dict()))


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout the code runs from; (None, False) outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None, False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, False


def code_version() -> str:
    """The git SHA of the checkout (``+dirty`` when modified), else the package version."""
    sha, dirty = git_state()
    if sha is None:
        return f"canbench-{canbench.__version__}"
    return sha + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Code version (commit, dirty flag), library versions and the device the result was computed on."""
    import timm
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    sha, dirty = git_state()
    return {
        "code_version": code_version(),
        "commit": sha,
        "dirty": dirty,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "device_type": "cuda" if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 1,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def batch_provenance(total_batch: int, accum_steps: int, world_size: int, contrastive: bool) -> dict[str, Any]:
    """How a batch was split: per device (per micro-step), accumulation, total, and the negatives each InfoNCE
    anchor sees: the other views of the whole batch, 2 x total - 2 (gathered over ranks, and over the
    accumulation steps by the gradient cache, canbench.train.step); None without InfoNCE."""
    per_device = total_batch // (accum_steps * world_size)
    return {"world_size": world_size, "per_device_batch": per_device, "accum_steps": accum_steps,
            "total_batch": total_batch, "negatives_per_anchor": 2 * total_batch - 2 if contrastive else None}


def protocol_fingerprint(**fields: Any) -> dict[str, Any]:
    """A fingerprint: the protocol fields given plus the environment."""
    fp = dict(fields)
    fp.update(environment())
    return fp


def mismatches(a: dict[str, Any], b: dict[str, Any], keys: list[str] | None = None) -> dict[str, tuple]:
    """Fields (``keys``, or all non-informational ones present in either) on which a and b differ."""
    if keys is None:
        keys = sorted((set(a) | set(b)) - INFORMATIONAL)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


__all__ = ["INFORMATIONAL", "NEUTRAL_TRAIN_KEYS", "PER_RUN_KEYS", "RECIPE_SECTIONS", "batch_provenance",
           "code_version", "environment", "git_state", "mismatches", "protocol_fingerprint",
           "result_affecting_train_keys", "train_fingerprint"]
