"""The configuration mechanism, and the schema of a training run's config.

One mechanism serves every configuration in canbench: the training config (this module), the
evaluation recipes (:mod:`canbench.evaluation.recipes`) and the grid resources
(:mod:`canbench.slurm.spec`). Each is a tree of dataclasses with typed defaults, filled from YAML or
``--set section.key=value`` overrides by :func:`apply`: a value is coerced to its annotation, an
unknown key fails with the closest valid ones, and range checks (:func:`check_range`,
:func:`check_choice`) name the key and the allowed values. Every such error is a
:class:`ConfigError`; the command line prints ``canbench: error: ...`` and exits 2, before any work.

What a method adds (its defaults and rules) lives on the method classes (:mod:`canbench.methods`);
:func:`canbench.train.recipe.build_config` resolves a full training config from them, a preset and
overrides. Values computed from a config (effective batch, absolute learning rates, schedule lengths,
the crop range of the view augmentation) come from :func:`derived` and are logged, never written back.

Why one module (~590 lines): the mechanism, the schema it fills and the values derived from that schema
are read together; split, each part would import the others.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

SCALES = ("smoke", "small", "paper")  # scale profiles: CPU minutes, one GPU for hours, the paper's recipe
SUITES = ("knn", "linear", "fewshot", "finetune", "shift")  # evaluation suites, in the order `all` runs them
IMAGENET_TRAIN_SIZE = 1_281_167  # an "ImageNet-equivalent epoch" is this many samples (paper Sec. 4.1)
LR_SCALING = "base_lr*batch/256"  # the linear scaling rule of every learning rate in canbench
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # input normalisation of pretraining and evaluation (timm's, MAE's)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHS: dict[str, dict[str, int]] = {
    # name: embed_dim, depth, heads, default patch, default image size
    "vit_micro": dict(embed_dim=192, depth=4, num_heads=3, patch_size=4, img_size=32),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16, img_size=224),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, img_size=224),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, img_size=224),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16, img_size=224),
}
NOISE_MODES = ("none", "augment_only", "loss_without_sigma_embedding", "full")  # paper Table 1
AUGMENTS = ("simclr", "mae")


class ConfigError(ValueError):
    """A configuration key, value, path or command-line argument is invalid; the message names it."""


def closest(key: str, options) -> str:
    """`` (did you mean 'a', 'b'?)`` for the options closest to ``key``, else `` (valid: ...)``."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(str(key), options, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {', '.join(repr(c) for c in close)}?)"
    return f" (valid: {', '.join(sorted(options))})"


# ---- the mechanism ------------------------------------------------------------------------------


def coerce(value: Any, tp: Any, key: str, strict: bool = False) -> Any:
    """``value`` (from YAML or the command line) as the annotated type ``tp``, or a ConfigError naming ``key``.

    ``strict``: no conversion between strings, numbers and booleans (a quoted ``"2"`` is not an int); ints
    still widen to floats and lists to tuples.
    """
    origin = get_origin(tp)
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (value == "None" and not strict):  # YAML null / ~ arrive as None already
            return None
        return coerce(value, args[0], key, strict)
    if tp is type(None):
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(get_args(tp))} values, got {value!r}")
        args = get_args(tp)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(coerce(v, a, key, strict) for v, a in zip(value, args))
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list like [a,b], got {value!r}")
        return list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({key}.<name>=value), got {value!r}")
        return value
    if tp is Any:
        return value
    if strict:
        ok = {bool: isinstance(value, bool), str: isinstance(value, str),
              int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool)}.get(tp, True)
        if not ok:
            raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
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
            value = float(value)
            if not math.isfinite(value):  # no setting of any schema means infinity or NaN
                raise ConfigError(f"{key}={value!r} is not a finite number")
            return value
        if tp is str:
            if isinstance(value, bool):  # YAML true/false for a string field (train.compile)
                return str(value).lower()
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


# Path-valued keys of every configuration tree: ``*.root``, ``*.val_root``, ``*.checkpoint`` and the mappings
# ``*.roots.<name>``. Their values are paths: ``~`` and ``$VAR`` expand (:func:`expand_path`), and on the
# command line (``--set data.root=~``) the value is taken as text, never as YAML (where ``~`` is null).
PATH_KEYS = ("root", "val_root", "checkpoint")
PATH_MAPPINGS = ("roots",)


def expand_path(value: str) -> str:
    """``~`` / ``~user`` and ``$VAR`` / ``${VAR}`` expanded (unset variables are left as written)."""
    return os.path.expandvars(os.path.expanduser(str(value)))


def is_path_key(key: str) -> bool:
    """Whether ``key`` (``section.name`` or deeper) holds a path (:data:`PATH_KEYS`, or inside a ``roots``)."""
    parts = str(key).split(".")
    return parts[-1] in PATH_KEYS or any(p in PATH_MAPPINGS for p in parts[:-1])


def expand_paths(key: str, value: Any) -> Any:
    """``value`` with paths expanded when ``key`` is path-valued (a ``roots`` mapping: each of its values)."""
    if isinstance(value, str) and is_path_key(key):
        return expand_path(value)
    if isinstance(value, dict) and str(key).split(".")[-1] in PATH_MAPPINGS:
        return {k: expand_path(v) if isinstance(v, str) else v for k, v in value.items()}
    return value


def apply(obj: Any, updates: dict[str, Any], prefix: str = "", label: str = "config key", strict: bool = False) -> None:
    """Set the fields of dataclass ``obj`` from the nested mapping ``updates`` (in place).

    Nested dataclasses recurse; mapping-typed fields are deep-merged (later layers add keys); every
    other value is coerced to its annotation. Unknown keys raise ``unknown <label> '<prefix><key>'``
    with the closest valid keys.
    """
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {updates!r}")
    hints = get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown {label} {key!r}{closest(k, names)}")
        cur = getattr(obj, k)
        if is_dataclass(cur):
            apply(cur, v, prefix=f"{key}.", label=label, strict=strict)
        elif isinstance(cur, dict) and isinstance(v, dict):
            setattr(obj, k, deep_merge(copy.deepcopy(cur), expand_paths(key, coerce(v, hints[k], key, strict))))
        else:
            setattr(obj, k, expand_paths(key, coerce(v, hints[k], key, strict)))


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (tuples become lists, for YAML and JSON)."""
    if is_dataclass(obj):
        if isinstance(obj, RunRecord):
            return obj.to_dict()
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def schema_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a dataclass tree as ``section.field`` (dict-typed fields are leaves)."""
    out: list[str] = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            out += schema_keys(v, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def check_range(key: str, value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ``<key>=<value> is out of range: allowed [lo, hi]`` (brackets show open ends). Infinities and NaN are
    never in range: an unbounded end (``hi=math.inf``) still means a finite number."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not a finite number")
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{key}={value!r} is out of range: allowed {interval}")


def check_choice(key: str, value: Any, options) -> None:
    """Raise ``<key>=<value> is not one of ...`` (with the closest options)."""
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, options))}{closest(value, options)}")


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
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML, so ``[1,5]``, ``0.5``, ``true`` work). The value of
    a path-valued key (:func:`is_path_key`) is text with ``~`` and ``$VAR`` expanded (``null`` still unsets it)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    if is_path_key(key):
        value = raw.strip()
        if value in ("null", "None"):
            return key.split("."), None
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":  # quoted: YAML unquotes it
            value = str(yaml.safe_load(value))
        return key.split("."), expand_path(value)
    try:
        value = yaml_numbers(yaml.safe_load(raw)) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"override {text!r}: the value is not valid YAML{at} "
                          f"({getattr(e, 'problem', None) or type(e).__name__}); quote it if it is a string, "
                          f"e.g. {key}='\"...\"'") from None
    return key.split("."), value


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


def deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """``dst`` updated in place by ``src``: mappings merge recursively, everything else is replaced (copied)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the inverse of :func:`nest`)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (nested mappings are kept and merged)."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        node = out
        parts = str(k).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {k!r} conflicts with an earlier value of {part!r}")
        if isinstance(v, dict) and isinstance(node.get(parts[-1]), dict):
            deep_merge(node[parts[-1]], v)
        else:
            node[parts[-1]] = copy.deepcopy(v)
    return out


# ---- the training config ------------------------------------------------------------------------


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
    """Fields left None take the method's defaults (``canbench.methods.<method>.defaults``)."""

    name: str = "can"
    mask_ratio: float | None = None
    l_nce: float | None = None  # weight of InfoNCE
    lam: float | None = None  # reconstruction vs denoising split of the rest
    sigma_max: float | None = None
    noise_mode: str | None = None  # none | augment_only | loss_without_sigma_embedding | full
    temperature: float = 0.1
    norm_pix_loss: bool = False  # MAE's per-patch normalised pixel target (option; paper: pixels)


DATA_PIPELINES = ("torch", "dali")
DALI_DATASETS = ("imagefolder", "imagenet", "jft")  # = canbench.data.pipeline.JPEG_SETS


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
    gpu_augment: bool = False  # decode (JPEG) and augment views batched on the device (docs/efficiency.md)
    # torch: the CPU workers, or the own device path with gpu_augment; dali: decode and augment in an NVIDIA
    # DALI pipeline on the device (ImageFolder JPEG sets; optional extra canbench[dali]; docs/efficiency.md)
    pipeline: str = "torch"
    # unreadable image files tolerated (each replaced by a fixed other sample, listed in summary.json) before a
    # run stops: a count (>= 1) or a fraction of the data set (< 1); 0 stops at the first one (docs/data.md)
    max_bad_images: float = 0.001


@dataclass
class OptimConfig:
    batch_size: int = 64  # global batch (all ranks, one optimizer step, accumulation included)
    accum_steps: int = 1
    base_lr: float = 1.5e-4  # lr = base_lr * batch_size / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    epochs: float = 1.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # scaled like base_lr
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
    ckpt_minutes: float = 0.0  # also checkpoint when this many minutes passed since the last one (0: off)
    keep_checkpoints: int = 1
    # torch CPU threads of the training process, set on every attempt (CPU results depend on it bit for bit;
    # docs/robustness.md); 0 leaves torch's choice (the machine's cores: reproducible on that machine only)
    threads: int = 1
    count_flops: bool = True  # FLOPs/image into summary.json (a few seconds at the end of a run)
    wandb: bool = False  # also log to Weights & Biases (pip install 'canbench[wandb]'; offline unless WANDB_MODE)


@dataclass
class RunRecord:
    """What a run *is*, beside its recipe: the ``extra`` section of its config.

    Written by the grid launcher (and ``preset`` by :func:`canbench.train.recipe.build_config`), read by
    evaluation, the grid tools and the reports. Two runs that differ only here train identically; the
    run id hashes the whole config, so a grid run's folder name still changes with it.
    """

    preset: str | None = None  # the preset the config was built from
    benchmark: str | None = None  # which paper table or figure: table1..table5, fig6, fig7, smoke, ...
    grid: str | None = None  # the grid spec's name
    scale: str | None = None  # smoke | small | paper
    run_name: str | None = None  # method, axes and seed, e.g. can-mask0.5-s0
    run_id: str | None = None  # hash of the rest of the config (canbench.slurm.grid.run_id_of)
    axes: dict[str, Any] | None = None  # the grid point at the paper's nominal values
    axes_scaled: dict[str, Any] | None = None  # axis values used at this scale, where they differ
    suites: list[str] | None = None  # evaluation suites the grid runs after pretraining
    eval: dict[str, Any] | None = None  # evaluation settings of this run (section -> key -> value)
    pretrain_data: str | None = None  # what data.root holds when its name cannot say (e.g. jft300m)
    synthetic: bool = False  # made-up results (report previews and tests)
    random_init: bool = False  # an untrained encoder (the random-init baseline of a benchmark)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (an empty record is ``{}``); None and False are left out."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None and getattr(self, f.name) is not False}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, strict: bool = True) -> RunRecord:
        """Typed record from a config's ``extra`` mapping; ``strict=False`` ignores unknown or ill-typed keys
        (reports read folders written by other versions and never stop on them)."""
        rec = cls()
        if not d:
            return rec
        if strict:
            apply(rec, d, prefix="extra.")
            return rec
        names = {f.name for f in fields(cls)}
        for k, v in d.items():
            if k in names:
                try:
                    apply(rec, {k: v}, prefix="extra.")
                except ConfigError:
                    continue
        return rec


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    extra: RunRecord = field(default_factory=RunRecord)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_plain(getattr(self, f.name)) for f in fields(self)}

    def validate(self, world_size: int = 1) -> None:
        """The checks every method shares (ranges, choices, shapes); method rules: the method class's ``check``."""
        m, mo, d, o, t = self.method, self.model, self.data, self.optim, self.train
        check_choice("model.arch", mo.arch, tuple(ARCHS))
        check_range("method.mask_ratio", m.mask_ratio, 0.0, 1.0, hi_open=True)
        check_range("method.l_nce", m.l_nce, 0.0, 1.0)
        check_range("method.lam", m.lam, 0.0, 1.0)
        check_range("method.sigma_max", m.sigma_max, 0.0, math.inf)
        check_range("method.temperature", m.temperature, 0.0, math.inf, lo_open=True)
        check_choice("method.noise_mode", m.noise_mode, NOISE_MODES)
        if mo.img_size % mo.patch_size:
            raise ConfigError(f"model.img_size={mo.img_size} is not divisible by model.patch_size={mo.patch_size}")
        n_tokens = (mo.img_size // mo.patch_size) ** 2
        if int(n_tokens * (1 - m.mask_ratio)) < 1:
            raise ConfigError(f"method.mask_ratio={m.mask_ratio} keeps no token of {n_tokens}")
        check_choice("model.pool", mo.pool, ("avg", "cls"))
        if mo.pool == "cls" and not mo.class_token:
            raise ConfigError("model.pool='cls' needs model.class_token=true")
        check_range("model.drop_path", mo.drop_path, 0.0, 1.0, hi_open=True)
        if mo.decoder_dim % mo.decoder_heads:
            raise ConfigError(f"model.decoder_dim={mo.decoder_dim} is not divisible by "
                              f"model.decoder_heads={mo.decoder_heads}")
        for key in ("decoder_depth", "proj_hidden", "proj_out", "decoder_dim", "decoder_heads"):
            check_range(f"model.{key}", getattr(mo, key), 1, math.inf)
        check_choice("data.augment", d.augment, AUGMENTS)
        check_choice("data.pipeline", d.pipeline, DATA_PIPELINES)
        if d.pipeline == "dali" and d.dataset not in DALI_DATASETS:
            raise ConfigError(f"data.pipeline=dali reads ImageFolder trees of JPEGs ({', '.join(DALI_DATASETS)}); "
                              f"data.dataset={d.dataset!r} is not one")
        check_range("data.crop_min_scale", d.crop_min_scale, 0.0, 1.0, lo_open=True)
        check_range("data.blur_kernel_frac", d.blur_kernel_frac, 0.0, 1.0)
        check_range("data.num_workers", d.num_workers, 0, math.inf)
        check_range("data.builtin_size", d.builtin_size, 1, math.inf)
        check_range("data.max_bad_images", d.max_bad_images, 0.0, math.inf)
        if d.max_bad_images >= 1 and not float(d.max_bad_images).is_integer():
            raise ConfigError(f"data.max_bad_images={d.max_bad_images!r}: a count (>= 1) must be a whole number; "
                              "a fraction of the data set is below 1")
        check_range("optim.batch_size", o.batch_size, 1, math.inf)
        check_range("optim.accum_steps", o.accum_steps, 1, math.inf)
        if o.batch_size % (o.accum_steps * world_size):
            raise ConfigError(f"optim.batch_size={o.batch_size} is not divisible by accum_steps x world size "
                              f"= {o.accum_steps} x {world_size}")
        check_range("optim.base_lr", o.base_lr, 0.0, math.inf)
        check_range("optim.weight_decay", o.weight_decay, 0.0, math.inf)
        for i, b in enumerate(o.betas):
            check_range(f"optim.betas[{i}]", b, 0.0, 1.0, hi_open=True)
        check_range("optim.epochs", o.epochs, 0.0, math.inf, lo_open=True)
        check_range("optim.warmup_epochs", o.warmup_epochs, 0.0, o.epochs)
        check_choice("optim.epoch_unit", o.epoch_unit, ("dataset", "imagenet"))
        if o.clip_grad is not None:
            check_range("optim.clip_grad", o.clip_grad, 0.0, math.inf, lo_open=True)
        if o.max_steps is not None:
            check_range("optim.max_steps", o.max_steps, 1, math.inf)
        check_choice("train.device", t.device, ("auto", "cpu", "cuda"))
        check_choice("train.precision", t.precision, ("auto", "fp32", "bf16", "fp16"))
        check_choice("train.compile", t.compile, ("auto", "true", "false"))
        check_range("train.log_every", t.log_every, 1, math.inf)
        check_range("train.ckpt_every", t.ckpt_every, 1, math.inf)
        check_range("train.keep_checkpoints", t.keep_checkpoints, 1, math.inf)
        check_range("train.ckpt_minutes", t.ckpt_minutes, 0.0, math.inf)
        check_range("train.threads", t.threads, 0, 1024)
        if self.extra.scale is not None:
            check_choice("extra.scale", self.extra.scale, SCALES)


SECTIONS = ("model", "method", "data", "optim", "train")  # the recipe; ``extra`` is the run record


def config_keys() -> dict[str, list[str]]:
    """Valid ``section.field`` config keys of the recipe, per section."""
    cfg = Config()
    return {s: [f.name for f in fields(getattr(cfg, s))] for s in SECTIONS}


# ---- derived values -----------------------------------------------------------------------------


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule used throughout (pretraining, linear probe, finetune): base_lr * batch / 256."""
    return base_lr * batch_size / 256


def crop_scale(d: DataConfig) -> tuple[float, float]:
    """The RandomResizedCrop area range of the view augmentation: ``(data.crop_min_scale, 1)``, except that
    ``data.augment=mae`` with the SimCLR default 0.08 uses MAE's own 0.2 (docs/protocols.md §2.3)."""
    if d.augment == "mae" and d.crop_min_scale == 0.08:
        return (max(d.crop_min_scale, 0.2), 1.0)
    return (d.crop_min_scale, 1.0)


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
    min_lr: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)


def derived(cfg: Config, dataset_len: int, world_size: int = 1) -> Derived:
    """Effective batch, absolute learning rates (:func:`scaled_lr`), the step schedule and the crop range
    (``cfg`` is already validated for ``world_size``: :func:`canbench.train.recipe.validate`)."""
    o = cfg.optim
    per_rank = o.batch_size // world_size
    unit = IMAGENET_TRAIN_SIZE if o.epoch_unit == "imagenet" else dataset_len
    steps_per_epoch = max(1, unit // o.batch_size)
    total = max(1, int(round(o.epochs * steps_per_epoch)))
    if o.max_steps is not None:
        total = min(total, o.max_steps)
    warmup = min(total, int(round(o.warmup_epochs * steps_per_epoch)))
    return Derived(world_size=world_size, per_rank_batch=per_rank, micro_batch=per_rank // o.accum_steps,
                   lr=scaled_lr(o.base_lr, o.batch_size), steps_per_epoch=steps_per_epoch, total_steps=total,
                   warmup_steps=warmup, min_lr=scaled_lr(o.min_lr, o.batch_size), crop_scale=crop_scale(cfg.data))


__all__ = [
    "ARCHS", "AUGMENTS", "Config", "ConfigError", "DALI_DATASETS", "DATA_PIPELINES", "DataConfig", "Derived",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "IMAGENET_TRAIN_SIZE", "LR_SCALING",
    "MethodConfig", "ModelConfig", "NOISE_MODES", "OptimConfig", "RunRecord", "SCALES", "SECTIONS", "SUITES",
    "TrainConfig", "apply", "check_choice", "check_range", "closest", "coerce", "config_keys", "crop_scale",
    "deep_merge", "derived", "expand_path", "expand_paths", "flatten", "is_path_key", "nest", "overrides_to_dict",
    "parse_override", "PATH_KEYS", "PATH_MAPPINGS", "scaled_lr", "schema_keys",
    "to_plain", "yaml_numbers",
]
