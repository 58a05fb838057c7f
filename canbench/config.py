"""Typed configuration: dataclasses, YAML presets, ``--set a.b=value`` overrides, validation.

Every error names the offending key (and the closest valid keys) or the allowed range, so a bad
grid cell fails before any job is submitted. Derived values (effective batch, absolute lr) are
computed by :func:`derived` and logged, never written back into the config.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

IMAGENET_TRAIN_SIZE = 1_281_167  # "ImageNet-equivalent epoch" = this many samples (paper Sec. 4.1)

ARCHS: dict[str, dict[str, int]] = {
    # name: embed_dim, depth, heads, default patch, default image size
    "vit_micro": dict(embed_dim=192, depth=4, num_heads=3, patch_size=4, img_size=32),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16, img_size=224),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, img_size=224),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, img_size=224),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16, img_size=224),
}
METHOD_NAMES = ("can", "simclr", "mae")
NOISE_MODES = ("none", "augment_only", "loss_without_sigma_embedding", "full")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it."""


@dataclass
class ModelConfig:
    arch: str = "vit_micro"
    img_size: int | None = None  # None: the arch's default
    patch_size: int | None = None  # None: the arch's default
    class_token: bool = False  # paper: no cls token, global average pool (App. C)
    pool: str = "avg"  # "avg" | "cls" (cls needs class_token)
    drop_path: float = 0.0
    decoder_dim: int = 512  # MAE / paper App. C decoder
    decoder_depth: int = 8
    decoder_heads: int = 16
    proj_hidden: int = 4096  # projection head: 2 x [FC 4096, BN, ReLU], FC 128 (App. C)
    proj_out: int = 128
    grad_checkpointing: bool = False  # activation checkpointing for large models / batches


@dataclass
class MethodConfig:
    name: str = "can"
    mask_ratio: float | None = None  # None: can 0.5, simclr 0.0, mae 0.75
    l_nce: float | None = None  # weight of InfoNCE; None: can 0.03, simclr 1, mae 0
    lam: float | None = None  # rec vs denoise split of the rest; None: can 0.7, simclr/mae 1
    sigma_max: float | None = None  # None: can 0.05, simclr/mae 0
    noise_mode: str | None = None  # none | augment_only | loss_without_sigma_embedding | full
    temperature: float = 0.1
    norm_pix_loss: bool = False  # MAE's per-patch normalised pixel target (option; paper: pixels)


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "can": dict(mask_ratio=0.5, l_nce=0.03, lam=0.7, sigma_max=0.05, noise_mode="full"),
    "simclr": dict(mask_ratio=0.0, l_nce=1.0, lam=1.0, sigma_max=0.0, noise_mode="none"),
    "mae": dict(mask_ratio=0.75, l_nce=0.0, lam=1.0, sigma_max=0.0, noise_mode="none"),
}


@dataclass
class DataConfig:
    dataset: str = "builtin"  # builtin | digits | imagefolder | a torchvision name (cifar10, ...)
    root: str | None = None
    split: str = "train"
    augment: str = "simclr"  # simclr (paper, also for MAE: Table 8) | mae (RandomResizedCrop+flip)
    crop_min_scale: float = 0.08
    blur_kernel_frac: float = 0.1
    color_jitter_strength: float = 1.0
    builtin_size: int = 4096  # images in the built-in training split
    builtin_version: int | None = None  # the built-in data set's version (set when built; BUILTIN_VERSION)
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    gpu_augment: bool = False  # apply view augmentations batched on the device (issue 6 fast path)


@dataclass
class OptimConfig:
    batch_size: int = 64  # global batch (all ranks, one optimizer step, accumulation included)
    accum_steps: int = 1
    base_lr: float = 1.5e-4  # lr = base_lr * batch_size / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    epochs: float = 1.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    epoch_unit: str = "dataset"  # dataset | imagenet ("ImageNet-equivalent epochs")
    clip_grad: float | None = None
    max_steps: int | None = None  # hard cap, for smoke runs and tests


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    # auto: torch.compile on CUDA (measured on an H100: +23-60% img/s, ~100 s to compile), eager on CPU
    compile: str = "auto"  # auto | true | false
    log_every: int = 10
    ckpt_every: int = 500  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 1
    count_flops: bool = True  # FLOPs/image into summary.json (a few seconds at the end of a run)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form sections owned by later stages

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


SECTIONS = ("model", "method", "data", "optim", "train")


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (tuples become lists, for YAML and JSON)."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _closest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else (
        f" (valid keys: {', '.join(sorted(options))})")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type, or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or value == "None":  # YAML null / ~ arrive as None already
            return None
        return _coerce(value, args[0], key)
    if tp is type(None):
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(get_args(tp))} values, got {value!r}")
        args = get_args(tp)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin in (list, dict) or tp in (list, dict) or tp is Any:
        return value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, bool):  # YAML true/false for a string field (train.compile)
                return str(value).lower()
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def _apply_dict(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}{_closest(k, names)}")
        cur = getattr(obj, k)
        if is_dataclass(cur):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping of keys, got {v!r}")
            _apply_dict(cur, v, prefix=f"{key}.")
        elif k == "extra" and isinstance(cur, dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping, got {v!r}")
            deep_merge(cur, v)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def yaml_numbers(obj: Any) -> Any:
    """Strings YAML 1.1 leaves unparsed but everyone means as numbers (``4e-4``, ``1E5``) -> float, recursively."""
    if isinstance(obj, str) and _FLOAT_RE.match(obj.strip()):
        return float(obj)
    if isinstance(obj, list):
        return [yaml_numbers(v) for v in obj]
    if isinstance(obj, dict):
        return {k: yaml_numbers(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML, so ``[1,5]``, ``0.5``, ``true`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_numbers(yaml.safe_load(raw)) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """``dst`` updated in place by ``src``: mappings merge recursively, everything else is replaced (copied)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dotted keys, the inverse of :func:`overrides_to_dict`'s nesting)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r} conflicts with an earlier override of {part!r}")
        node[path[-1]] = value
    return out


def _preset_dir() -> Path:
    from canbench import train  # the presets ship with the train package

    return Path(train.__file__).resolve().parent / "presets"


def list_presets() -> dict[str, dict[str, Any]]:
    """name -> parsed preset YAML, for every preset that ships with the package."""
    out = {}
    for p in sorted(_preset_dir().glob("*.yaml")):
        with open(p) as f:
            out[p.stem] = yaml.safe_load(f) or {}
    return out


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (``smoke``) or a YAML path; returns the raw preset mapping (reads one file)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"preset file not found: {p}")
    else:
        p = _preset_dir() / f"{name_or_path}.yaml"
        if not p.is_file():
            names = [q.stem for q in _preset_dir().glob("*.yaml")]
            raise ConfigError(f"unknown preset {name_or_path!r}{_closest(name_or_path, names)}")
    with open(p) as f:
        return yaml.safe_load(f) or {}


def build_config(method: str, preset: str | None = None, overrides: list[str] | dict | None = None,
                 validate_paths: bool = True) -> Config:
    """Method defaults <- preset (common part, then its per-method part) <- overrides; validated."""
    if method not in METHOD_NAMES:
        raise ConfigError(f"unknown method {method!r}{_closest(method, METHOD_NAMES)}")
    cfg = Config()
    cfg.method.name = method
    if preset:
        raw = load_preset(preset)
        allowed = {"description", "config", "methods", "scale"}
        for k in raw:
            if k not in allowed:
                raise ConfigError(f"preset {preset!r}: unknown top-level key {k!r}{_closest(k, allowed)}")
        _apply_dict(cfg, raw.get("config") or {})
        per_method = (raw.get("methods") or {})
        for m in per_method:
            if m not in METHOD_NAMES:
                raise ConfigError(f"preset {preset!r}: unknown method section {m!r}"
                                  f"{_closest(m, METHOD_NAMES)}")
        _apply_dict(cfg, per_method.get(method) or {})
        cfg.extra.setdefault("preset", preset)
    if overrides:
        upd = overrides if isinstance(overrides, dict) else overrides_to_dict(overrides)
        if "method" in upd and isinstance(upd["method"], dict) and "name" in upd["method"] \
                and upd["method"]["name"] != method:
            raise ConfigError(f"method.name={upd['method']['name']!r} contradicts the method {method!r}")
        _apply_dict(cfg, upd)
    resolve_method_defaults(cfg)
    if cfg.data.dataset == "builtin" and cfg.data.builtin_version is None:
        from canbench.data.builtin import BUILTIN_VERSION

        cfg.data.builtin_version = BUILTIN_VERSION  # recorded, so runs on another version are never mixed
    validate(cfg, check_paths=validate_paths)
    return cfg


def config_from_dict(d: dict[str, Any], validate_paths: bool = False) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (checkpoints, run folders)."""
    cfg = Config()
    _apply_dict(cfg, d)
    resolve_method_defaults(cfg)
    validate(cfg, check_paths=validate_paths)
    return cfg


def resolve_method_defaults(cfg: Config) -> None:
    """Fill the method's None fields with that method's defaults (in place)."""
    defaults = METHOD_DEFAULTS.get(cfg.method.name)
    if defaults is None:
        raise ConfigError(f"method.name: unknown method {cfg.method.name!r}{_closest(cfg.method.name, METHOD_NAMES)}")
    for k, v in defaults.items():
        if getattr(cfg.method, k) is None:
            setattr(cfg.method, k, v)
    arch = ARCHS.get(cfg.model.arch)
    if arch is None:
        raise ConfigError(f"model.arch: unknown architecture {cfg.model.arch!r}{_closest(cfg.model.arch, ARCHS)}")
    if cfg.model.img_size is None:
        cfg.model.img_size = arch["img_size"]
    if cfg.model.patch_size is None:
        cfg.model.patch_size = arch["patch_size"]


def _range(key: str, value: float, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi) or (isinstance(value, float) and math.isnan(value)):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{key}={value!r} is out of range: allowed {interval}")


def _choice(key: str, value: str, options) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, options))}{_closest(value, options)}")


def validate(cfg: Config, world_size: int = 1, check_paths: bool = True) -> None:
    """Raise ConfigError on the first invalid value, naming the key and the allowed range."""
    m, mo, d, o, t = cfg.method, cfg.model, cfg.data, cfg.optim, cfg.train
    _choice("method.name", m.name, METHOD_NAMES)
    _choice("model.arch", mo.arch, tuple(ARCHS))
    _range("method.mask_ratio", m.mask_ratio, 0.0, 1.0, hi_open=True)
    _range("method.l_nce", m.l_nce, 0.0, 1.0)
    _range("method.lam", m.lam, 0.0, 1.0)
    _range("method.sigma_max", m.sigma_max, 0.0, math.inf)
    _range("method.temperature", m.temperature, 0.0, math.inf, lo_open=True)
    _choice("method.noise_mode", m.noise_mode, NOISE_MODES)
    if m.name == "mae" and m.l_nce != 0.0:
        raise ConfigError("method.l_nce must be 0 for mae (one view, no contrastive term); use method can")
    if m.name == "simclr" and m.l_nce != 1.0:
        raise ConfigError("method.l_nce must be 1 for simclr (contrastive only); use method can to mix losses")
    if m.noise_mode != "none" and m.sigma_max == 0.0 and m.name == "can":
        raise ConfigError(f"method.noise_mode={m.noise_mode!r} needs method.sigma_max > 0 "
                          "(or set method.noise_mode=none)")
    if mo.img_size % mo.patch_size:
        raise ConfigError(f"model.img_size={mo.img_size} is not divisible by model.patch_size={mo.patch_size}")
    n_tokens = (mo.img_size // mo.patch_size) ** 2
    if int(n_tokens * (1 - m.mask_ratio)) < 1:
        raise ConfigError(f"method.mask_ratio={m.mask_ratio} keeps no token of {n_tokens}")
    _choice("model.pool", mo.pool, ("avg", "cls"))
    if mo.pool == "cls" and not mo.class_token:
        raise ConfigError("model.pool='cls' needs model.class_token=true")
    _range("model.drop_path", mo.drop_path, 0.0, 1.0, hi_open=True)
    if mo.decoder_dim % mo.decoder_heads:
        raise ConfigError(f"model.decoder_dim={mo.decoder_dim} is not divisible by "
                          f"model.decoder_heads={mo.decoder_heads}")
    for key in ("decoder_depth", "proj_hidden", "proj_out", "decoder_dim", "decoder_heads"):
        _range(f"model.{key}", getattr(mo, key), 1, math.inf)
    _choice("data.augment", d.augment, ("simclr", "mae"))
    _range("data.crop_min_scale", d.crop_min_scale, 0.0, 1.0, lo_open=True)
    _range("data.blur_kernel_frac", d.blur_kernel_frac, 0.0, 1.0)
    _range("data.num_workers", d.num_workers, 0, math.inf)
    _range("data.builtin_size", d.builtin_size, 1, math.inf)
    if d.builtin_version is not None:
        from canbench.data.builtin import BUILTIN_VERSION

        if d.dataset != "builtin":
            raise ConfigError(f"data.builtin_version={d.builtin_version!r} is set, but data.dataset={d.dataset!r}")
        if d.builtin_version != BUILTIN_VERSION:
            raise ConfigError(f"data.builtin_version={d.builtin_version!r}: this checkout renders version "
                              f"{BUILTIN_VERSION} of the built-in data set (data/builtin.py); a run made on "
                              "another version cannot be trained or resumed here")
    _range("optim.batch_size", o.batch_size, 1, math.inf)
    _range("optim.accum_steps", o.accum_steps, 1, math.inf)
    if o.batch_size % (o.accum_steps * world_size):
        raise ConfigError(f"optim.batch_size={o.batch_size} is not divisible by accum_steps x world size "
                          f"= {o.accum_steps} x {world_size}")
    if m.name in ("can", "simclr") and o.batch_size // (o.accum_steps * world_size) < 2:
        raise ConfigError("optim.batch_size per rank and micro-step must be >= 2 for the contrastive loss")
    _range("optim.base_lr", o.base_lr, 0.0, math.inf)
    _range("optim.weight_decay", o.weight_decay, 0.0, math.inf)
    for i, b in enumerate(o.betas):
        _range(f"optim.betas[{i}]", b, 0.0, 1.0, hi_open=True)
    _range("optim.epochs", o.epochs, 0.0, math.inf, lo_open=True)
    _range("optim.warmup_epochs", o.warmup_epochs, 0.0, o.epochs)
    _choice("optim.epoch_unit", o.epoch_unit, ("dataset", "imagenet"))
    if o.clip_grad is not None:
        _range("optim.clip_grad", o.clip_grad, 0.0, math.inf, lo_open=True)
    if o.max_steps is not None:
        _range("optim.max_steps", o.max_steps, 1, math.inf)
    _choice("train.device", t.device, ("auto", "cpu", "cuda"))
    _choice("train.precision", t.precision, ("auto", "fp32", "bf16", "fp16"))
    _choice("train.compile", t.compile, ("auto", "true", "false"))
    _range("train.log_every", t.log_every, 1, math.inf)
    _range("train.ckpt_every", t.ckpt_every, 1, math.inf)
    _range("train.keep_checkpoints", t.keep_checkpoints, 1, math.inf)
    if check_paths and d.dataset not in ("builtin", "digits"):
        if not d.root:
            raise ConfigError(f"data.root must be set for data.dataset={d.dataset!r}")
        if not Path(d.root).exists():
            raise ConfigError(f"data.root={d.root!r} does not exist (data.dataset={d.dataset!r})")


@dataclass(frozen=True)
class Derived:
    """Values computed from the config; logged, never written back."""

    world_size: int
    per_rank_batch: int  # per optimizer step, before accumulation split
    micro_batch: int  # per forward pass on one rank
    lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def derived(cfg: Config, dataset_len: int, world_size: int = 1) -> Derived:
    """Effective batch, absolute lr (base_lr * batch / 256) and the step schedule."""
    o = cfg.optim
    validate(cfg, world_size=world_size, check_paths=False)
    per_rank = o.batch_size // world_size
    unit = IMAGENET_TRAIN_SIZE if o.epoch_unit == "imagenet" else dataset_len
    steps_per_epoch = max(1, unit // o.batch_size)
    total = max(1, int(round(o.epochs * steps_per_epoch)))
    if o.max_steps is not None:
        total = min(total, o.max_steps)
    warmup = min(total, int(round(o.warmup_epochs * steps_per_epoch)))
    return Derived(world_size=world_size, per_rank_batch=per_rank, micro_batch=per_rank // o.accum_steps,
                   lr=o.base_lr * o.batch_size / 256, steps_per_epoch=steps_per_epoch, total_steps=total,
                   warmup_steps=warmup)


def replace(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` (deep), for derived runs."""
    new = Config()
    _apply_dict(new, cfg.to_dict())
    for k, v in sections.items():
        setattr(new, k, v)
    return new


__all__ = [
    "ARCHS", "Config", "ConfigError", "DataConfig", "Derived", "IMAGENET_TRAIN_SIZE", "METHOD_DEFAULTS",
    "METHOD_NAMES", "MethodConfig", "ModelConfig", "NOISE_MODES", "OptimConfig", "TrainConfig",
    "build_config", "config_from_dict", "derived", "list_presets", "load_preset",
    "overrides_to_dict", "parse_override", "to_plain", "validate",
]
