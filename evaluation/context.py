"""The evaluation context: settings, data family, image size and device of one call, plus what suites share.

:func:`build_context` resolves everything cheap before any suite runs (the profile and its source, the
layered :class:`~canbench.evaluation.recipes.EvalSettings`, the data set, the encoder's description);
:class:`Context` then loads the frozen encoder once (:meth:`canbench.evaluation.source.Source.encoder`) and
caches features, so kNN and the cached-features linear probe extract them once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from canbench.config import ConfigError, ModelConfig, yaml_numbers
from canbench.evaluation import recipes as RC
from canbench.evaluation.presets import resolve_preset
from canbench.evaluation.source import Source, finetuned_meta
from canbench.evaluation.splits import DataSpec, check_root_is_read, family
from canbench.rundir import RunDir
from canbench.runtime import resolve_device
from canbench.train.recipe import scale_of

log = logging.getLogger(__name__)

FEATURE_CACHE_BYTES = 2 << 30  # features shared between kNN and the cached linear probe, at most this much


@dataclass
class Context:
    source: Source
    out: RunDir  # where results go: <out>/eval/<suite>.json
    settings: RC.EvalSettings
    profile: str
    scale: str
    family: str  # builtin | imagenet | generic
    dataset: str  # the eval data set (data.dataset)
    img_size: int
    encoder_desc: dict[str, Any]
    device: torch.device
    model_cfg: ModelConfig | None = None  # external sources
    user_keys: frozenset[str] = frozenset()  # "section.key" set by a preset file, extra.eval or overrides
    _encoder: torch.nn.Module | None = None
    _features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def encoder(self) -> torch.nn.Module:
        """The frozen encoder on the device (loaded on first use)."""
        if self._encoder is None:
            self._encoder = self.source.encoder(self.model_cfg).to(self.device).eval()
        return self._encoder

    def features(self, spec: DataSpec, ds: Any, crop_pct: float, mean: Sequence[float], std: Sequence[float],
                 batch_size: int, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-encoder features of ``ds`` under the eval transform, extracted once per call of :func:`evaluate`
        (kNN and the cached-features linear probe share them; kept while they fit in ``FEATURE_CACHE_BYTES``)."""
        from canbench.evaluation.features import extract_features, make_eval_loader
        from canbench.evaluation.transforms import TransformedDataset, eval_transform

        key = json.dumps([spec.describe(), spec.root, self.img_size, crop_pct, list(mean), list(std)], sort_keys=True)
        if key in self._features:
            return self._features[key]
        tf = eval_transform(self.img_size, crop_pct, mean, std)
        out = extract_features(self.encoder(), make_eval_loader(TransformedDataset(ds, tf), batch_size, num_workers),
                               self.device)
        held = sum(f.numel() * f.element_size() for f, _ in self._features.values())
        if held + out[0].numel() * out[0].element_size() <= FEATURE_CACHE_BYTES:
            self._features[key] = out
        return out

    def pretrain_builtin_size(self) -> int | None:
        """The pretraining run's built-in training size, when it pretrained on this evaluation's data set."""
        cfg = self.source.pretrain_cfg
        return cfg.data.builtin_size if cfg is not None and cfg.data.dataset == self.dataset else None

    def crop(self, value: float | None, generated: bool | None = None) -> float:
        """A suite's crop_pct: the setting, else 1.0 on generated sets (rendered at the model size), else 224/256."""
        if value is not None:
            return float(value)
        gen = self.family == "builtin" if generated is None else generated
        return 1.0 if gen else RC.DEFAULT_CROP_PCT


def build_context(source: Source, out: str | Path, *, scale: str | None = None, preset: str | None = None,
                  overrides: list[str] | dict[str, Any] | None = None,
                  device: str | torch.device | None = None) -> Context:
    """Settings, data family, image size and encoder description for ``source`` (no heavy work)."""
    pre = resolve_preset(preset)
    user = RC.parse_overrides(overrides)
    cfg = source.config()
    if scale is not None and scale not in RC.PROFILES:
        raise ConfigError(f"scale {scale!r} is not one of {', '.join(RC.PROFILES)}")
    auto_scale, why = scale_of(cfg)
    profile = scale or (pre.profile if pre and pre.profile else None) or auto_scale
    if scale is None and not (pre and pre.profile):
        log.info("evaluation profile %s (from %s)", profile, why)
    scale_name = "paper" if profile == "mae" else profile
    run_layer = yaml_numbers((cfg.extra.eval if cfg is not None else None) or {})
    if not isinstance(run_layer, dict):
        raise ConfigError(f"extra.eval of the run config must be a mapping of evaluation settings, got {run_layer!r}")
    RC.validate_settings(run_layer, "evaluation setting (extra.eval)")
    layers = (pre.settings if pre else {}, run_layer, user)
    settings = RC.build_settings(profile, *layers)
    model_keys_set = {k for layer in layers for k in layer.get("model", {})}
    model_cfg = None
    if source.kind == "external":
        from canbench.evaluation.external import external_model_config, protocol_pool

        model_cfg = external_model_config(source.checkpoint(), dataclasses.asdict(settings.model), source.arch,
                                          pre.model if pre else None)
        if "pool" not in model_keys_set:  # the format's own frozen-feature protocol (MAE: the cls token)
            model_cfg.pool = protocol_pool(source.fmt, model_cfg.class_token)
        settings.model.pool = model_cfg.pool  # the pooling used is what the recipe fingerprint records
        img_size = model_cfg.img_size
        enc_desc = {"source": source.fmt, "arch": model_cfg.arch, "img_size": model_cfg.img_size,
                    "patch_size": model_cfg.patch_size, "class_token": model_cfg.class_token, "pool": model_cfg.pool}
    else:
        if model_keys_set:
            raise ConfigError(f"model.{sorted(model_keys_set)[0]}: model settings describe public checkpoints "
                              "(--format mae|timm); a canbench checkpoint carries its own model config")
        if source.kind == "finetuned":
            meta = finetuned_meta(source.path)
            img_size = int(meta.get("img_size", 224))
            enc_desc = {"source": "canbench-finetuned", "model_name": meta.get("model_name"), "img_size": img_size}
        else:
            mo = cfg.model
            img_size = int(mo.img_size)
            enc_desc = {"source": "canbench", "arch": mo.arch, "img_size": mo.img_size, "patch_size": mo.patch_size,
                        "class_token": mo.class_token, "pool": mo.pool}
    data = settings.data
    origin = "data.dataset"
    if data.dataset is None:
        if cfg is not None:  # JFT-300M has no labelled evaluation split: its encoders are evaluated on IN-1K
            data.dataset = "imagefolder" if cfg.data.dataset == "jft" else cfg.data.dataset
            origin = "the pretraining run's data.dataset"
        elif pre is not None and pre.data.get("dataset"):
            data.dataset = pre.data["dataset"]
            origin = f"preset {pre.name}"
        else:
            data.dataset = "imagefolder"  # public checkpoints: IN-1K as <root>/{train,val}/<wnid>/*
    check_root_is_read(data.dataset, data, origin)  # never a root silently ignored for generated data
    if data.root is None and cfg is not None and data.dataset == cfg.data.dataset \
            and cfg.optim.epoch_unit != "imagenet":
        # the pretraining root is the evaluation root (IN-1K pretraining); with "ImageNet-equivalent epochs"
        # the pretraining data is something else (JFT-style) and data.root must name IN-1K explicitly
        data.root = cfg.data.root
    user_keys = frozenset(f"{sec}.{k}" for layer in layers for sec, body in layer.items() for k in body)
    return Context(source=source, out=RunDir(out), settings=settings, profile=profile, scale=scale_name,
                   family=family(data.dataset), dataset=data.dataset, img_size=img_size, encoder_desc=enc_desc,
                   device=resolve_device(device), model_cfg=model_cfg, user_keys=user_keys)


__all__ = ["Context", "FEATURE_CACHE_BYTES", "build_context"]
