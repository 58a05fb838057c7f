"""Evaluation recipes: the typed settings of every suite, the named protocols, the scale profiles and presets.

The settings of one ``canbench evaluate`` / :func:`canbench.evaluation.runner.run_suites` call are an
:class:`EvalSettings` tree built with the one configuration mechanism (:func:`canbench.config.apply`,
strict types), in layers, later wins:

1. the suite defaults (the dataclasses below), then the scale profile (:data:`PROFILES`: ``smoke``,
   ``small``, ``paper``, and ``mae`` = paper with MAE's linear-probe / finetune variants);
2. an eval preset (``--preset``: a profile, a pretraining preset's scale, or an eval YAML file);
3. the pretraining config's ``extra.eval`` (how a grid spec passes settings and data roots to its runs);
4. ``--set section.key=value`` overrides.

Unknown sections and keys fail naming the key. ``linear.*`` / ``finetune.*`` take the fields of
:class:`LinearProbeConfig` / :class:`FinetuneConfig` plus ``protocol``, the named variant they start from
(:data:`PROTOCOLS`, recorded in the result's fingerprint). Every key of every section is part of a result's
recipe fingerprint (:func:`recipe_fingerprint`) unless :data:`NEUTRAL_EVAL_KEYS` names it with the reason
(paths, worker counts, feature-extraction batch sizes: speed and file locations, never numbers).

========== ==========================================================================================
section    keys
========== ==========================================================================================
data       dataset, root, val_root, train_size, test_size (the linear / kNN / finetune data)
model      arch, img_size, patch_size, class_token, pool (public checkpoints only: ``--format``)
linear     protocol (paper | mae | small | smoke) + LinearProbeConfig fields
knn        k, temperature, crop_pct, batch_size, num_workers
fewshot    datasets, root, roots.<name>, shots, seeds, head, linear_head.<key>, crop_pct, train_size,
           test_size, batch_size, num_workers
finetune   protocol (paper | mae | small | smoke) + FinetuneConfig fields
shift      sets, roots.<set>, checkpoint, options.<key>, test_size, batch_size, num_workers
========== ==========================================================================================
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from canbench.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SCALES,
    SUITES,
    ConfigError,
    apply,
    check_choice,
    check_range,
    overrides_to_dict,
    yaml_numbers,
)

PROFILES = SCALES + ("mae",)  # evaluation profiles: the scales plus MAE's linear-probe / finetune variants
SECTIONS = ("data", "model") + SUITES
DEFAULT_CROP_PCT = 224 / 256  # Resize(256) + CenterCrop(224) at S = 224 (docs/protocols.md §3)
LINEAR_MODES = ("full", "cached_features")
_PATH = "a path: the data it holds is compared as its identity"
_WORKERS = "loader parallelism"
_FEATURE_BATCH = "the batch of frozen-encoder feature extraction (eval mode, no batch statistics)"
# Keys of each section that never change a result, with the reason (docs/reports.md lists them).
NEUTRAL_EVAL_KEYS: dict[str, dict[str, str]] = {
    "data": {"root": _PATH, "val_root": _PATH,
             "dataset": "the loader; what each split holds is compared as its identity (eval_data)"},
    "model": {},
    "knn": {"batch_size": _FEATURE_BATCH, "num_workers": _WORKERS},
    "linear": {"eval_batch_size": _FEATURE_BATCH, "num_workers": _WORKERS},
    "fewshot": {"root": _PATH, "roots": _PATH, "batch_size": _FEATURE_BATCH, "num_workers": _WORKERS},
    "finetune": {"eval_batch_size": "the batch of the validation passes (eval mode)", "num_workers": _WORKERS},
    "shift": {"roots": _PATH, "checkpoint": "the classifier is identified by its sha256", "batch_size": _FEATURE_BATCH,
              "num_workers": _WORKERS},
}


# ---- the suites' protocols ------------------------------------------------------------------------


@dataclass
class LinearProbeConfig:
    """Linear-probe protocol; defaults are the paper's Table 11 (MAE's, except 100 epochs)."""

    epochs: float = 100.0  # paper Table 11 (MAE main_linprobe uses 90)
    warmup_epochs: float = 10.0
    batch_size: int = 16384  # global batch (all ranks)
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    img_size: int = 224
    crop_pct: float = DEFAULT_CROP_PCT  # eval: Resize(S / crop_pct) + CenterCrop(S)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mode: str = "full"  # "full" (augment, encoder every step) | "cached_features"
    eval_every: int = 1  # epochs between validations (the last epoch is always evaluated)
    eval_batch_size: int = 256  # per rank, feature extraction
    num_workers: int = 0
    seed: int = 0
    max_steps: int | None = None  # hard cap for smoke runs (recorded in the fingerprint)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        if self.mode not in LINEAR_MODES:
            raise ConfigError(f"linear.mode={self.mode!r} is not one of {LINEAR_MODES}")
        for key in ("epochs", "batch_size", "base_lr", "img_size", "eval_every", "eval_batch_size"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"linear.{key}={getattr(self, key)!r} must be > 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"linear.warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs}]")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"linear.crop_pct={self.crop_pct} must be in (0, 1]")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"linear.max_steps={self.max_steps} must be >= 1")


@dataclass
class FinetuneConfig:
    """Finetuning protocol; defaults are the paper's Table 10."""

    epochs: float = 100.0
    warmup_epochs: float = 5.0
    batch_size: int = 1024  # global batch
    base_lr: float = 5e-4  # lr = base_lr * batch_size / 256
    min_lr: float = 1e-6  # MAE main_finetune default (the paper gives none)
    weight_decay: float = 0.005  # paper Table 10 (MAE: 0.05)
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.65
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # docs/protocols.md §6 (Table 10: RandAug(2, 9))
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    mixup: float = 0.0  # MAE: 0.8 (option)
    cutmix: float = 0.0  # MAE: 1.0 (option)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    clip_grad: float | None = None
    img_size: int = 224
    crop_pct: float = DEFAULT_CROP_PCT
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_every: int = 1
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = 0
    max_steps: int | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        for key in ("epochs", "batch_size", "base_lr", "img_size", "eval_every", "eval_batch_size"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"finetune.{key}={getattr(self, key)!r} must be > 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"finetune.warmup_epochs={self.warmup_epochs} must be in [0, {self.epochs}]")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"finetune.layer_decay={self.layer_decay} must be in (0, 1]")
        for key in ("drop_path", "label_smoothing", "re_prob", "mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"finetune.{key}={getattr(self, key)!r} must be in [0, 1]")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"finetune.mixup={self.mixup} / cutmix={self.cutmix} must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"finetune.max_steps={self.max_steps} must be >= 1")

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


@dataclass
class LinearHeadConfig:
    """Few-shot's trained-head option (paper App. C "Few shot training", ViT-paper pipeline)."""

    lr: float = 0.01  # paper App. C base lr
    steps: int = 2500  # paper App. C
    batch_size: int = 512  # ViT paper transfer batch; capped at the subset size
    momentum: float = 0.9  # SGD with momentum, as the ViT paper's transfer runs
    clip_grad: float = 1.0  # global-norm clipping, as the ViT paper
    schedule: str = "cosine"  # cosine decay to 0, no warmup
    seed: int = 0


# Named variants of the two trained protocols (``linear.protocol`` / ``finetune.protocol``): the protocol's
# defaults above <- the variant <- the settings' own keys. Below paper scale the probe caches features.
PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    "linear": {
        "paper": {},
        "mae": {"epochs": 90.0},
        "small": {"mode": "cached_features", "batch_size": 1024, "epochs": 50.0, "warmup_epochs": 5.0,
                  "img_size": 32, "crop_pct": 1.0},
        "smoke": {"mode": "cached_features", "batch_size": 64, "epochs": 2.0, "warmup_epochs": 0.0,
                  "img_size": 32, "crop_pct": 1.0},
    },
    "finetune": {
        "paper": {},
        "mae": {"weight_decay": 0.05, "mixup": 0.8, "cutmix": 1.0},
        "small": {"batch_size": 256, "epochs": 30.0, "warmup_epochs": 3.0, "img_size": 32, "crop_pct": 1.0},
        "smoke": {"batch_size": 16, "epochs": 1.0, "warmup_epochs": 0.0, "img_size": 32, "crop_pct": 1.0},
    },
}
PROTOCOL_CLASSES: dict[str, type] = {"linear": LinearProbeConfig, "finetune": FinetuneConfig}


def protocol_config(suite: str, protocol: str = "paper", **overrides: Any) -> Any:
    """A validated LinearProbeConfig / FinetuneConfig: defaults <- the named protocol <- overrides (keys checked)."""
    table = PROTOCOLS[suite]
    if protocol not in table:
        raise ConfigError(f"{suite}.protocol={protocol!r} is not one of {sorted(table)}")
    cfg = PROTOCOL_CLASSES[suite]()
    apply(cfg, table[protocol])
    apply(cfg, overrides, label={"linear": "linear-probe key", "finetune": "finetune key"}[suite])
    cfg.validate()
    return cfg


def linear_config(protocol: str = "paper", **overrides: Any) -> LinearProbeConfig:
    """``protocol_config("linear", ...)``."""
    return protocol_config("linear", protocol, **overrides)


def finetune_config(protocol: str = "paper", **overrides: Any) -> FinetuneConfig:
    """``protocol_config("finetune", ...)``."""
    return protocol_config("finetune", protocol, **overrides)


# ---- the settings ---------------------------------------------------------------------------------


@dataclass
class EvalData:
    """The linear / kNN / finetune data (default: the pretraining data set; sizes of generated sets)."""

    dataset: str | None = None
    root: str | None = None
    val_root: str | None = None
    train_size: int | None = None
    test_size: int | None = None


@dataclass
class ExternalModel:
    """The ViT shape of a public checkpoint (read from its weights; these keys check or complete it)."""

    arch: str | None = None
    img_size: int | None = None
    patch_size: int | None = None
    class_token: bool | None = None
    pool: str = "avg"  # frozen-feature pooling; unset, a public checkpoint uses its format's (external.PROTOCOL_POOL)


@dataclass
class KnnSettings:
    k: int = 20
    temperature: float = 0.07
    crop_pct: float | None = None  # None: 1.0 on generated sets, else DEFAULT_CROP_PCT
    batch_size: int = 256
    num_workers: int = 0


@dataclass
class FewshotSettings:
    datasets: list[str] | None = None  # None: the built-in held-out family and digits (built-in pretraining)
    root: str | None = None
    roots: dict[str, str] = field(default_factory=dict)
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    head: str = "lsr"  # lsr (closed form, big_vision) | linear (trained head, paper App. C)
    linear_head: dict[str, Any] = field(default_factory=dict)  # LinearHeadConfig keys
    crop_pct: float | None = None
    train_size: int | None = None
    test_size: int | None = None
    batch_size: int = 256
    num_workers: int = 0


@dataclass
class ShiftSettings:
    sets: list[str] | None = None  # None: the family's sets (built-in variants, or the paper's seven)
    roots: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None  # a finetuned classifier (default: <run>/finetune/finetuned.pt)
    options: dict[str, Any] = field(default_factory=dict)  # per-set builder options (e.g. builtin_size)
    test_size: int | None = None
    batch_size: int = 128
    num_workers: int = 0


@dataclass
class EvalSettings:
    """Every section of an evaluation call (layered by :func:`build_settings`)."""

    data: EvalData = field(default_factory=EvalData)
    model: ExternalModel = field(default_factory=ExternalModel)
    knn: KnnSettings = field(default_factory=KnnSettings)
    linear: dict[str, Any] = field(default_factory=dict)  # protocol + LinearProbeConfig keys
    fewshot: FewshotSettings = field(default_factory=FewshotSettings)
    finetune: dict[str, Any] = field(default_factory=dict)  # protocol + FinetuneConfig keys
    shift: ShiftSettings = field(default_factory=ShiftSettings)

    def validate(self) -> None:
        check_choice("model.pool", self.model.pool, ("avg", "cls"))
        check_choice("fewshot.head", self.fewshot.head, ("lsr", "linear"))
        for key, vals, lo in (("shots", self.fewshot.shots, 1), ("seeds", self.fewshot.seeds, 0)):
            if not vals or not all(isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in vals):
                kind = "positive " if key == "shots" else "non-negative "
                raise ConfigError(f"fewshot.{key} must be a non-empty list of {kind}integers, got {vals!r}")
        for key in ("knn.k", "knn.batch_size", "fewshot.batch_size", "shift.batch_size"):
            sec, k = key.split(".")
            check_range(key, getattr(getattr(self, sec), k), 1, math.inf)
        if self.shift.test_size is not None:
            check_range("shift.test_size", self.shift.test_size, 1, math.inf)
        check_range("shift.num_workers", self.shift.num_workers, 0, math.inf)
        apply(LinearHeadConfig(), self.fewshot.linear_head, prefix="fewshot.linear_head.", label="evaluation setting",
              strict=True)


# Scale profiles: each section's settings on top of the suite defaults. Sizes left None mean "the data set's
# default"; the built-in train size defaults to the pretraining run's data.builtin_size. The image size
# always follows the encoder (no resolution change).
PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {
        # cached features; the head is cheap, so it trains to convergence. LARS scales every step to
        # lr * 0.001 * |w|: the paper's 100 epochs at lr 6.4 (batch 16384) add up to ~45 "relative steps";
        # 100 epochs of 8 steps at lr 64 give the same (the plain "smoke" linear protocol, 2 epochs at lr 0.025,
        # adds up to 0.002 and leaves the head at its initialisation: chance accuracy)
        "linear": {"protocol": "smoke", "epochs": 100.0, "warmup_epochs": 10.0, "batch_size": 256,
                   "base_lr": 64.0},
        # the "smoke" finetune protocol (1 epoch, batch 16, lr 3e-5) leaves the loss at ln(10): chance. Here:
        # lr 1e-3 (batch 64), 5 epochs, and no RandAugment / RandomErasing / drop path, which at 32 px
        # wipe out the shape (a random-init ViT-micro still reaches only ~15% after 2 epochs without them)
        "finetune": {"protocol": "smoke", "batch_size": 64, "base_lr": 4e-3, "epochs": 5.0, "warmup_epochs": 0.5,
                     "auto_augment": None, "re_prob": 0.0, "drop_path": 0.0},
        "data": {"test_size": None},
    },
    "small": {"linear": {"protocol": "small"}, "finetune": {"protocol": "small"}},
    "paper": {"linear": {"protocol": "paper"}, "finetune": {"protocol": "paper"}},
    "mae": {"linear": {"protocol": "mae"}, "finetune": {"protocol": "mae"}},
}


def _check_layer(layer: dict[str, Any], where: str) -> None:
    """A settings layer's sections, keys and value types (apply onto scratch objects), before it is used."""
    if not isinstance(layer, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (e.g. linear: {{epochs: 90}}), got {layer!r}")
    scratch = EvalSettings()
    for section, body in layer.items():
        if section not in SECTIONS:
            from canbench.config import closest

            raise ConfigError(f"unknown {where} section {section!r}{closest(section, SECTIONS)}; keys look like "
                              "linear.epochs=90 or data.root=/datasets/imagenet")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected keys ({section}.<key>=value), got {body!r}")
        if section in PROTOCOL_CLASSES:
            rest = dict(body)
            protocol = rest.pop("protocol", None)
            if protocol is not None:
                check_choice(f"{section}.protocol", protocol, tuple(PROTOCOLS[section]))
            apply(PROTOCOL_CLASSES[section](), rest, prefix=f"{section}.", label=where, strict=True)
        else:
            apply(getattr(scratch, section), body, prefix=f"{section}.", label=where, strict=True)
    scratch.validate()  # choices and list contents of what this layer sets


def validate_settings(settings: dict[str, Any], where: str = "evaluation setting") -> None:
    """Raise ConfigError naming the first unknown section / key or ill-typed value of a settings mapping."""
    _check_layer(settings, where)


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["linear.epochs=90", "fewshot.roots.dtd=/d"]`` (or a nested dict) -> validated nested dict."""
    if not overrides:
        return {}
    out = overrides_to_dict(list(overrides)) if not isinstance(overrides, dict) else yaml_numbers(overrides)
    _check_layer(out, "evaluation setting")
    return out


def build_settings(profile: str, *layers: dict[str, Any] | None) -> EvalSettings:
    """Suite defaults <- ``PROFILE_SETTINGS[profile]`` <- each layer; validated."""
    if profile not in PROFILE_SETTINGS:
        raise ConfigError(f"evaluation profile {profile!r} is not one of {PROFILES}")
    out = EvalSettings()
    for layer in (PROFILE_SETTINGS[profile], *layers):
        if layer:
            _check_layer(layer, "evaluation setting")
            apply(out, copy.deepcopy(layer), label="evaluation setting", strict=True)
    out.validate()
    return out


def recipe_fingerprint(section: str, mapping: dict[str, Any]) -> dict[str, Any]:
    """A section's settings without its neutral keys (:data:`NEUTRAL_EVAL_KEYS`), sorted."""
    neutral = NEUTRAL_EVAL_KEYS[section]
    return {k: v for k, v in sorted(mapping.items()) if k not in neutral}


def suite_recipe(section: str, values: dict[str, Any], settings: EvalSettings) -> dict[str, Any]:
    """The recipe a suite's result records: its own keys and the data / model sections, neutral keys left out."""
    return {**recipe_fingerprint(section, values),
            "data": recipe_fingerprint("data", section_dict(settings.data)),
            "model": recipe_fingerprint("model", section_dict(settings.model))}


def trained_protocol(section: str, settings: EvalSettings, scale: str, img_size: int, crop_pct: float,
                     user_keys: frozenset[str] = frozenset()) -> tuple[Any, dict[str, Any]]:
    """The linear probe's / finetune's config (the named protocol <- the settings, the encoder's image size, the
    family's crop, a warm-up fitted to short schedules) and its recipe fingerprint. A profile's warm-up longer
    than user-set epochs shrinks to a tenth of them; a warm-up the user set is kept."""
    kw = dict(getattr(settings, section))
    protocol = kw.pop("protocol", None) or scale
    if kw.get("img_size") not in (None, img_size):
        raise ConfigError(f"{section}.img_size={kw['img_size']} differs from the encoder's image size {img_size} "
                          "(resolution changes are not supported)")
    kw["img_size"] = img_size
    kw["crop_pct"] = crop_pct if kw.get("crop_pct") is None else float(kw["crop_pct"])
    if protocol in PROTOCOLS[section]:
        defaults = protocol_config(section, protocol)
        epochs = kw.get("epochs", defaults.epochs)
        warm = kw.get("warmup_epochs", defaults.warmup_epochs)
        if warm > epochs and f"{section}.warmup_epochs" not in user_keys:
            kw["warmup_epochs"] = epochs / 10
    cfg = protocol_config(section, protocol, **kw)
    values = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as stored results hold them
    return cfg, {"protocol": protocol, **suite_recipe(section, values, settings)}


def paper_recipe(section: str, img_size: int = 224) -> dict[str, Any]:
    """The recipe fingerprint of the paper's linear probe (Table 11) or finetune (Table 10) on IN-1K."""
    return json.loads(_paper_recipe(section, img_size))


@functools.lru_cache(maxsize=8)
def _paper_recipe(section: str, img_size: int) -> str:
    return json.dumps(trained_protocol(section, build_settings("paper"), "paper", img_size, DEFAULT_CROP_PCT)[1])


def section_dict(section: Any) -> dict[str, Any]:
    """A typed settings section as a plain mapping (lists copied)."""
    return copy.deepcopy(dataclasses.asdict(section))


__all__ = ["DEFAULT_CROP_PCT", "EvalData", "EvalSettings", "ExternalModel", "FewshotSettings",
           "FinetuneConfig", "KnnSettings", "LINEAR_MODES", "LinearHeadConfig", "LinearProbeConfig",
           "NEUTRAL_EVAL_KEYS", "PROFILES", "PROFILE_SETTINGS", "PROTOCOLS", "SECTIONS", "ShiftSettings",
           "build_settings", "finetune_config", "linear_config", "paper_recipe", "parse_overrides",
           "protocol_config", "recipe_fingerprint", "section_dict", "suite_recipe",
           "trained_protocol", "validate_settings"]
