"""Run evaluation suites on a pretrained encoder and store their results: the one entry point after pretraining.

:func:`run_suites` (grid launcher, ``make demo``) and ``canbench evaluate`` (:mod:`.cli`) both go
through :func:`evaluate`:

1. **Source** — what is evaluated (:func:`resolve_source`): a run folder (``checkpoints/last.pt``), a
   canbench checkpoint file, a finetune folder (``<run>/finetune/finetuned.pt``, shift only) or a
   public MAE / timm checkpoint (``fmt="mae" | "timm"``; the ViT shape is read from the weights).
2. **Settings** — the scale profile (``extra.scale`` of the pretraining config, else its preset's
   ``scale``; public checkpoints: paper) <- ``--preset`` <- the run config's ``extra.eval`` <- overrides
   (:mod:`.presets`; unknown keys are errors naming the key).
3. **Plan** — every requested suite resolves its data and protocol config and checks every data root
   *before any work*: a missing root raises :class:`~canbench.config.ConfigError` naming the set and
   the path. The data follow the pretraining data set: ``builtin`` -> linear / kNN / finetune on the
   built-in train / test splits at the pretraining image size, few-shot on ``builtin_heldout`` and
   ``digits``, shift on the built-in shift variants; ``imagefolder`` / ``imagenet`` -> IN-1K train / val
   from ``data.root`` (few-shot and shift data sets and roots from ``fewshot.*`` / ``shift.*``).
4. **Run or skip** — each suite writes ``<out>/eval/<suite>.json`` atomically
   (:func:`~canbench.evaluation.results.write_result`) with its fingerprint (incl. ``dataset``) and the
   checkpoint's sha256 and step. A suite whose stored result has the same planned settings
   (``dataset``, ``eval_data``, ``eval_config``, ``eval_profile``, ``encoder``) and checkpoint is skipped
   unless ``force``. ``shift`` evaluates ``<out>/finetune/finetuned.pt``; when that is missing or stale
   the ``finetune`` suite runs first.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from canbench.config import ARCHS, Config, ConfigError, ModelConfig
from canbench.evaluation import presets as P
from canbench.evaluation import results as R
from canbench.runtime import resolve_device
from canbench.train.recipe import config_from_dict, scale_of

log = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"
FINETUNED_FILE = "finetuned.pt"
EVAL_DIR = "eval"
BUILTIN_SHIFT_SETS = ("builtin", "builtin_noise_blur", "builtin_rendition", "builtin_new_background",
                      "builtin_occlusion")
BUILTIN_FEWSHOT_SETS = ("builtin_heldout", "digits")
IMAGENET_NAMES = ("imagenet", "imagefolder")
FEATURE_CACHE_BYTES = 2 << 30  # features shared between kNN and the cached linear probe, at most this much
PLAN_KEYS = ("dataset", "eval_data", "eval_config", "eval_profile", "encoder")
BUILTIN_SEED = 0  # evaluation always reads the canonical built-in data set (seed 0), whatever the pretraining seed
IMAGEFOLDER_EXPECTED = ("<root>/train/<class>/* and <root>/val/<class>/* (or data.root=<root>/train with a "
                        "sibling val/, or data.val_root=<val folder>)")


def generated_sets() -> tuple[str, ...]:
    """Registered data sets that need no root (built-in family and variants, digits)."""
    from canbench.data.datasets import DATASETS

    return tuple(n for n, s in DATASETS.items() if not s.needs_root)


# ----------------------------------------------------------------------------------------------------
# What is evaluated


@dataclass
class Source:
    """The checkpoint under evaluation and what is known about it."""

    kind: str  # run | file | external | finetuned
    path: Path  # the checkpoint file
    run_dir: Path | None = None  # the run folder it belongs to (if any)
    fmt: str | None = None  # external: mae | timm
    arch: str | None = None  # external: --arch
    pretrain_cfg: Config | None = None
    _ckpt: dict[str, Any] | None = None  # canbench checkpoint: step + encoder state (loaded once)
    _external_sd: dict[str, torch.Tensor] | None = None
    _info: dict[str, Any] | None = None

    @property
    def default_out(self) -> Path | None:
        return self.run_dir

    def _load_canbench(self) -> dict[str, Any]:
        if self._ckpt is None:
            from canbench.train.checkpoint import load

            raw = load(self.path)
            if "config" not in raw or "model" not in raw:
                raise ConfigError(f"{self.path}: not a canbench checkpoint (keys {sorted(raw)[:8]}); "
                                  "for public MAE / timm weights pass --format mae|timm")
            self._ckpt = {"step": raw.get("step"), "config": raw["config"],
                          "encoder": {k[len("encoder."):]: v for k, v in raw["model"].items()
                                      if k.startswith("encoder.")}}
            if self.pretrain_cfg is None:
                self.pretrain_cfg = config_from_dict(raw["config"])
        return self._ckpt

    def external_state(self) -> dict[str, torch.Tensor]:
        if self._external_sd is None:
            from canbench.evaluation.external import read_checkpoint

            self._external_sd = read_checkpoint(self.path)
        return self._external_sd

    def checkpoint_info(self) -> dict[str, Any]:
        """``{"path", "sha256", "step"}`` of the evaluated checkpoint (computed once)."""
        if self._info is None:
            step = None
            if self.kind in ("run", "file"):
                step = self._load_canbench()["step"]
            elif self.kind == "finetuned":
                step = _finetuned_meta(self.path).get("step")
            self._info = R.checkpoint_info(self.path, step)
        return self._info


def _finetuned_meta(path: Path) -> dict[str, Any]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in obj.items() if k != "model"}


def _is_run_dir(p: Path) -> bool:
    return (p / "checkpoints" / "last.pt").is_file() or (p / "config.yaml").is_file()


def resolve_source(path: str | Path, fmt: str | None = None, arch: str | None = None) -> Source:
    """A run folder, a canbench checkpoint file, a finetune folder / file, or (``fmt``) a public checkpoint."""
    p = Path(path).expanduser()
    if fmt is not None:
        if fmt not in ("mae", "timm"):
            raise ConfigError(f"--format {fmt!r} is not one of 'mae', 'timm'")
        if not p.is_file():
            raise ConfigError(f"public checkpoint {p} does not exist (or is not a file)")
        return Source("external", p, fmt=fmt, arch=arch)
    if arch is not None:
        raise ConfigError("--arch describes public checkpoints: use it with --format mae|timm")
    if p.is_dir():
        if (p / "checkpoints" / "last.pt").is_file():
            cfg = None
            if (p / "config.yaml").is_file():
                from canbench.io import read_yaml

                cfg = config_from_dict(read_yaml(p / "config.yaml"))
            return Source("run", p / "checkpoints" / "last.pt", run_dir=p, pretrain_cfg=cfg)
        if (p / FINETUNED_FILE).is_file():
            run_dir = p.parent if _is_run_dir(p.parent) else None
            return Source("finetuned", p / FINETUNED_FILE, run_dir=run_dir, pretrain_cfg=_run_config(run_dir))
        raise ConfigError(f"{p} is neither a run folder (no checkpoints/last.pt) nor a finetune folder "
                          f"(no {FINETUNED_FILE})")
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    from canbench.evaluation.classifier import CHECKPOINT_FORMAT

    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        run_dir = p.parent.parent if p.parent.name == FINETUNE_DIR and _is_run_dir(p.parent.parent) else None
        return Source("finetuned", p, run_dir=run_dir, pretrain_cfg=_run_config(run_dir))
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
        src = Source("file", p, run_dir=run_dir)
        src._ckpt = {"step": obj.get("step"), "config": obj["config"],
                     "encoder": {k[len("encoder."):]: v for k, v in obj["model"].items() if k.startswith("encoder.")}}
        src.pretrain_cfg = config_from_dict(obj["config"])
        return src
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ConfigError(f"{p} is not a canbench checkpoint (top-level keys {keys}); for public MAE / timm "
                      "weights pass --format mae|timm (and --arch, e.g. vit_base)")


def _run_config(run_dir: Path | None) -> Config | None:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return None
    from canbench.io import read_yaml

    return config_from_dict(read_yaml(run_dir / "config.yaml"))


# ----------------------------------------------------------------------------------------------------
# Encoder of a public checkpoint


def external_model_config(sd: dict[str, torch.Tensor], model: dict[str, Any], arch: str | None = None,
                          preset_model: dict[str, Any] | None = None) -> ModelConfig:
    """The ViT shape of a public checkpoint: read from its tensors, checked against --arch / model.* settings."""
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise ConfigError(f"public checkpoint holds no ViT encoder (no patch_embed.proj.weight / pos_embed; "
                          f"keys {sorted(sd)[:8]})")
    dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    has_cls = "cls_token" in sd
    n_pos = sd["pos_embed"].shape[1]
    grid = None
    for n in ((n_pos - 1, n_pos) if has_cls else (n_pos,)):
        r = math.isqrt(max(n, 0))
        if n > 0 and r * r == n:
            grid = r
            break
    if grid is None:
        raise ConfigError(f"public checkpoint: pos_embed of length {n_pos} is not a square grid")
    preset_model = preset_model or {}
    name = model.get("arch") or arch or preset_model.get("arch")
    if name is None:
        matches = [a for a, spec in ARCHS.items() if (spec["embed_dim"], spec["depth"]) == (dim, depth)]
        if not matches:
            raise ConfigError(f"public checkpoint: no architecture with width {dim} and depth {depth} "
                              f"(known: {', '.join(ARCHS)}); pass --arch")
        name = matches[0]
    if name not in ARCHS:
        raise ConfigError(f"--arch / model.arch {name!r} is not one of {', '.join(ARCHS)}")
    spec = ARCHS[name]
    if (spec["embed_dim"], spec["depth"]) != (dim, depth):
        raise ConfigError(f"--arch {name} is width {spec['embed_dim']}, depth {spec['depth']}; the checkpoint "
                          f"is width {dim}, depth {depth}")
    patch_size = model.get("patch_size") or int(patch)
    img_size = model.get("img_size") or grid * int(patch)
    class_token = has_cls if model.get("class_token") is None else bool(model["class_token"])
    return ModelConfig(arch=name, img_size=int(img_size), patch_size=int(patch_size), class_token=class_token,
                       pool=model.get("pool", "avg"))


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class DataSpec:
    """One split of one data set, buildable later; ``describe()`` (no paths) goes into the fingerprint."""

    name: str  # registry name (build_dataset)
    split: str
    label: str | None = None  # the name results use (e.g. "imagenet" for an ImageFolder IN-1K)
    root: str | None = None
    size: int | None = None  # generated sets only (None: the set's default)

    @property
    def generated(self) -> bool:
        return self.name in generated_sets()

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.label or self.name, "split": self.split}
        if self.generated and self.name != "digits":
            from canbench.data.builtin import BUILTIN_VERSION

            d.update(size=self.size, seed=BUILTIN_SEED, version=BUILTIN_VERSION)
        return d

    def build(self, img_size: int) -> Any:
        from canbench.data.datasets import build_dataset

        kw: dict[str, Any] = {}
        if self.generated and self.name != "digits":
            kw = {"size": self.size, "seed": BUILTIN_SEED}
        return build_dataset(self.name, self.root, self.split, img_size, **kw)


def _num_classes(ds: Any) -> int:
    n = getattr(ds, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes)
    from canbench.evaluation.fewshot import dataset_labels

    return int(dataset_labels(ds).max()) + 1


def _check_dir(what: str, path: str | Path | None, key: str) -> Path:
    if path is None:
        raise ConfigError(f"{what}: no data root given; set {key}=/path/to/it")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what}: root {p} does not exist (or is not a folder); set {key}=/path/to/it")
    return p


def _registry_check(name: str, root: Path, split: str, key: str) -> None:
    """The registry's required files for ``name`` / ``split`` under ``root`` (cheap path checks, no decoding)."""
    from canbench.data.datasets import check_dataset_layout

    try:
        check_dataset_layout(name, root, split)
    except ConfigError as e:
        raise type(e)(f"{e}\n(root from {key}={root})") from None


def _eval_split(name: str) -> str:
    """``test`` when the set has one, else ``val``."""
    from canbench.data.datasets import DATASETS

    spec = DATASETS.get(name)
    if spec is None or not spec.splits or "test" in spec.splits:
        return "test"
    return "val"


def imagenet_specs(dataset: str, root: str | None, val_root: str | None) -> tuple[DataSpec, DataSpec]:
    """IN-1K train / val: torchvision ``imagenet`` layout or ImageFolder (``<root>/{train,val}`` or root=.../train)."""
    base = _check_dir("data set 'imagenet' (IN-1K train/val)", root, "data.root")
    if dataset == "imagenet":
        _registry_check("imagenet", base, "train", "data.root")
        _registry_check("imagenet", base, "val", "data.root")
        return DataSpec("imagenet", "train", "imagenet", str(base)), DataSpec("imagenet", "val", "imagenet", str(base))
    if (base / "train").is_dir():
        train = DataSpec("imagefolder", "train", "imagenet", str(base))
        parent = base
    elif base.name == "train":
        train = DataSpec("imagefolder", "train", "imagenet", str(base.parent))
        parent = base.parent
    else:
        raise ConfigError(f"data set 'imagenet' (ImageFolder): no train folder at {base / 'train'}; "
                          f"expected {IMAGEFOLDER_EXPECTED}")
    if val_root is not None:
        v = _check_dir("data set 'imagenet' val split", val_root, "data.val_root")
        val = DataSpec("imagefolder", "val", "imagenet", str(v))
    elif (parent / "val").is_dir():
        val = DataSpec("imagefolder", "val", "imagenet", str(parent))
    else:
        raise ConfigError(f"data set 'imagenet' (ImageFolder): no val folder at {parent / 'val'}; "
                          f"expected {IMAGEFOLDER_EXPECTED}")
    return train, val


# ----------------------------------------------------------------------------------------------------
# Planning


@dataclass
class Context:
    source: Source
    out: Path
    settings: dict[str, Any]
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

    def features(self, spec: DataSpec, ds: Any, crop_pct: float, mean: Sequence[float], std: Sequence[float],
                 batch_size: int, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-encoder features of ``ds`` under the eval transform, extracted once per call of :func:`evaluate`
        (kNN and the cached-features linear probe share them; kept while they fit in ``FEATURE_CACHE_BYTES``)."""
        import json

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

    def encoder(self) -> torch.nn.Module:
        """The frozen encoder on the device (loaded on first use)."""
        if self._encoder is None:
            from canbench.methods.backbone import build_encoder

            if self.source.kind == "external":
                from canbench.evaluation.external import load_external

                enc = build_encoder(self.model_cfg)
                report = load_external(enc, self.source.external_state(), fmt=self.source.fmt)
                log.info("loaded %s checkpoint %s (%d tensors, dropped %s)", self.source.fmt, self.source.path,
                         len(report["loaded"]), report["dropped"][:6])
            elif self.source.kind in ("run", "file"):
                ck = self.source._load_canbench()
                enc = build_encoder(config_from_dict(ck["config"]).model)  # the checkpoint's own model config
                enc.load_state_dict(ck["encoder"], strict=True)
            else:
                raise ConfigError(f"{self.source.path} is a finetuned classifier: only the shift suite evaluates it")
            self._encoder = enc.to(self.device).eval()
        return self._encoder


@dataclass
class SuitePlan:
    """A suite ready to run: the fields known beforehand (skip check) and the function that computes it."""

    suite: str
    plan_fields: dict[str, Any]
    run: Callable[[], dict[str, Any]]
    checkpoint: Callable[[], dict[str, Any]]
    extra_done: Callable[[], str | None] = field(default=lambda: None)  # another reason to rerun, or None


def _family(dataset: str) -> str:
    if dataset in IMAGENET_NAMES:
        return "imagenet"
    if dataset in generated_sets():
        return "builtin"
    return "generic"


def _crop(family: str, value: float | None) -> float:
    from canbench.evaluation.transforms import DEFAULT_CROP_PCT

    if value is not None:
        return float(value)
    return 1.0 if family == "builtin" else DEFAULT_CROP_PCT  # generated images are rendered at the model size


def _main_specs(ctx: Context) -> tuple[DataSpec, DataSpec]:
    """The linear / kNN / finetune train and evaluation splits."""
    d = ctx.settings["data"]
    if ctx.family == "imagenet":
        return imagenet_specs(ctx.dataset, d["root"], d["val_root"])
    if ctx.family == "builtin":
        train_size = d["train_size"]
        cfg = ctx.source.pretrain_cfg
        if train_size is None and cfg is not None and cfg.data.dataset == ctx.dataset:
            train_size = cfg.data.builtin_size  # the images the encoder was pretrained on (labels unused there)
        return (DataSpec(ctx.dataset, "train", size=train_size),
                DataSpec(ctx.dataset, _eval_split(ctx.dataset), size=d["test_size"]))
    root = _check_dir(f"data set {ctx.dataset!r}", d["root"], "data.root")
    from canbench.data.datasets import DATASETS

    if ctx.dataset not in DATASETS:
        raise ConfigError(f"data.dataset={ctx.dataset!r} is not a registered data set ({', '.join(sorted(DATASETS))})")
    split = _eval_split(ctx.dataset)
    _registry_check(ctx.dataset, root, "train", "data.root")
    _registry_check(ctx.dataset, root, split, "data.root")
    return DataSpec(ctx.dataset, "train", root=str(root)), DataSpec(ctx.dataset, split, root=str(root))


def _plan_fields(ctx: Context, dataset: Any, data: Any, config: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": dataset, "eval_data": data, "eval_config": config, "eval_profile": ctx.profile,
            "encoder": ctx.encoder_desc}


def _with_img_size(section: str, kw: dict[str, Any], img_size: int) -> dict[str, Any]:
    if kw.get("img_size") not in (None, img_size):
        raise ConfigError(f"{section}.img_size={kw['img_size']} differs from the encoder's image size {img_size} "
                          "(resolution changes are not supported)")
    return {**kw, "img_size": img_size}


def _fit_warmup(ctx: Context, section: str, kw: dict[str, Any], defaults: Any) -> None:
    """A profile's warmup longer than user-set epochs shrinks to a tenth of them (a user-set warmup is kept)."""
    epochs = kw.get("epochs", defaults.epochs)
    warm = kw.get("warmup_epochs", defaults.warmup_epochs)
    if warm > epochs and f"{section}.warmup_epochs" not in ctx.user_keys:
        kw["warmup_epochs"] = epochs / 10
        log.info("%s: warmup_epochs %s > epochs %s: using %s", section, warm, epochs, kw["warmup_epochs"])


def _trained_suite_setup(ctx: Context, section: str, scales: dict[str, dict[str, Any]], cfg_cls: type,
                         make_cfg: Callable[..., Any]) -> tuple[Any, dict[str, Any], DataSpec, DataSpec]:
    """The linear probe's / finetune's config (protocol + settings, encoder's image size, the family's crop,
    warm-up fitted to short schedules), its fingerprint and the train / eval splits; checked before any work."""
    kw = dict(ctx.settings[section])
    protocol = kw.pop("protocol", ctx.scale)
    kw = _with_img_size(section, kw, ctx.img_size)
    kw["crop_pct"] = _crop(ctx.family, kw.get("crop_pct"))
    if protocol in scales:
        _fit_warmup(ctx, section, kw, cfg_cls(**scales[protocol]))
    cfg = make_cfg(protocol, **kw)
    train, val = _main_specs(ctx)
    if train.generated and train.size is not None and cfg.batch_size > train.size:
        raise ConfigError(f"{section}.batch_size={cfg.batch_size} exceeds the {train.size} training images "
                          f"({train.name} train); set {section}.batch_size or data.train_size")
    conf = {"protocol": protocol, **P.fingerprint_config(_plain(dataclasses.asdict(cfg)))}
    return cfg, conf, train, val


def plan_linear(ctx: Context) -> SuitePlan:
    from canbench.evaluation.linear import LINEAR_SCALES, LinearProbeConfig, linear_config, run_linear

    cfg, conf, train, val = _trained_suite_setup(ctx, "linear", LINEAR_SCALES, LinearProbeConfig, linear_config)

    def run() -> dict[str, Any]:
        tr, va = train.build(ctx.img_size), val.build(ctx.img_size)
        splits = (("val", val, va), ("train", train, tr)) if cfg.mode == "cached_features" else (("val", val, va),)
        feats = {k: ctx.features(spec, ds, cfg.crop_pct, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.num_workers)
                 for k, spec, ds in splits}
        out = run_linear(ctx.encoder(), tr, va, cfg, ctx.device, num_classes=_num_classes(tr), dataset=ctx_label(train),
                         features=feats)
        out["metrics"] = {**out["metrics"], "history": out.get("history", [])}
        return out

    return SuitePlan("linear", _plan_fields(ctx, ctx_label(train), {"train": train.describe(), "test": val.describe()},
                                            conf), run, ctx.source.checkpoint_info)


def ctx_label(spec: DataSpec) -> str:
    return spec.label or spec.name


def plan_knn(ctx: Context) -> SuitePlan:
    from canbench.evaluation.knn import run_knn

    s = dict(ctx.settings["knn"])
    s["crop_pct"] = _crop(ctx.family, s.get("crop_pct"))
    train, val = _main_specs(ctx)
    conf = {**P.fingerprint_config(s), "img_size": ctx.img_size}

    def run() -> dict[str, Any]:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        tr, va = train.build(ctx.img_size), val.build(ctx.img_size)
        feats = {split: ctx.features(spec, ds, s["crop_pct"], IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                                     s["batch_size"], s["num_workers"])
                 for split, spec, ds in (("train", train, tr), ("val", val, va))}
        return run_knn(ctx.encoder(), tr, va, img_size=ctx.img_size, device=ctx.device, k=s["k"],
                       temperature=s["temperature"], batch_size=s["batch_size"], num_workers=s["num_workers"],
                       crop_pct=s["crop_pct"], num_classes=_num_classes(tr), dataset=ctx_label(train),
                       features=feats)

    return SuitePlan("knn", _plan_fields(ctx, ctx_label(train), {"train": train.describe(), "test": val.describe()},
                                         conf), run, ctx.source.checkpoint_info)


def _fewshot_specs(ctx: Context, name: str, s: dict[str, Any]) -> tuple[DataSpec, DataSpec]:
    from canbench.data.datasets import DATASETS

    test_size = s["test_size"] if s["test_size"] is not None else ctx.settings["data"]["test_size"]
    if name in generated_sets():
        return (DataSpec(name, "train", size=s["train_size"]),
                DataSpec(name, _eval_split(name), size=test_size))
    roots = s["roots"] or {}
    root = roots.get(name, s["root"])
    key = f"fewshot.roots.{name}"
    if name in DATASETS:
        base = _check_dir(f"few-shot data set {name!r}", root, key)
        split = _eval_split(name)
        _registry_check(name, base, "train", key)
        _registry_check(name, base, split, key)
        return DataSpec(name, "train", root=str(base)), DataSpec(name, split, root=str(base))
    if name not in roots:
        raise ConfigError(f"fewshot.datasets: unknown data set {name!r} (registered: {', '.join(sorted(DATASETS))}); "
                          f"an ImageFolder set (e.g. CUB-200, UC Merced) needs {key}=/path with train/ and test/")
    base = _check_dir(f"few-shot data set {name!r} (ImageFolder)", roots[name], key)
    if not (base / "train").is_dir():
        raise ConfigError(f"few-shot data set {name!r} (ImageFolder): no {base / 'train'}; expected "
                          f"<root>/train/<class>/* and <root>/test/<class>/* (or val/)")
    split = "test" if (base / "test").is_dir() else "val"
    if not (base / split).is_dir():
        raise ConfigError(f"few-shot data set {name!r} (ImageFolder): no {base / 'test'} or {base / 'val'}")
    return (DataSpec("imagefolder", "train", label=name, root=str(base)),
            DataSpec("imagefolder", split, label=name, root=str(base)))


def _merge_fields(per_set: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One fingerprint for several data sets: a field that differs becomes ``{set: value}``."""
    keys = sorted({k for f in per_set.values() for k in f})
    out: dict[str, Any] = {}
    for k in keys:
        vals = {n: per_set[n].get(k) for n in per_set}
        first = next(iter(vals.values()))
        out[k] = first if all(v == first for v in vals.values()) else vals
    out["dataset"] = list(names)
    return out


def plan_fewshot(ctx: Context) -> SuitePlan:
    from canbench.evaluation.fewshot import LinearHeadConfig, run_fewshot

    s = copy.deepcopy(ctx.settings["fewshot"])
    names = s["datasets"]
    if names is None:
        if ctx.family != "builtin":
            raise ConfigError("fewshot: no data sets given; set fewshot.datasets=[cifar10,dtd,...] and "
                              "fewshot.root=/datasets (or fewshot.roots.<name>=/path per set)")
        names = list(BUILTIN_FEWSHOT_SETS)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"fewshot.datasets must be a non-empty list of names, got {names!r}")
    shots, seeds = s["shots"], s["seeds"]
    for key, vals in (("shots", shots), ("seeds", seeds)):
        if not vals or not all(isinstance(v, int) and not isinstance(v, bool) and v >= (1 if key == "shots" else 0)
                               for v in vals):
            raise ConfigError(f"fewshot.{key} must be a non-empty list of {'positive' if key == 'shots' else ''} "
                              f"integers, got {vals!r}")
    lh_keys = {f.name for f in dataclasses.fields(LinearHeadConfig)}
    for k in s["linear_head"]:
        if k not in lh_keys:
            raise ConfigError(f"unknown evaluation setting fewshot.linear_head.{k} "
                              f"(valid: {', '.join(sorted(lh_keys))})")
    linear_cfg = LinearHeadConfig(**s["linear_head"]) if s["head"] == "linear" else None
    specs = {n: _fewshot_specs(ctx, n, s) for n in names}
    crops = {n: _crop("builtin" if specs[n][0].generated else "other", s["crop_pct"]) for n in names}
    conf = {**P.fingerprint_config({k: v for k, v in s.items() if k not in ("datasets", "train_size", "test_size")}),
            "crop_pct": crops if len(set(crops.values())) > 1 else next(iter(crops.values())), "img_size": ctx.img_size}
    data = {n: {"train": tr.describe(), "test": te.describe()} for n, (tr, te) in specs.items()}

    def run() -> dict[str, Any]:
        results, fields, details = [], {}, {}
        for n in names:
            tr_spec, te_spec = specs[n]
            tr, te = tr_spec.build(ctx.img_size), te_spec.build(ctx.img_size)
            t0 = time.time()
            out = run_fewshot(ctx.encoder(), tr, te, img_size=ctx.img_size, device=ctx.device, shots=shots,
                              seeds=seeds, head=s["head"], num_classes=_num_classes(tr), batch_size=s["batch_size"],
                              num_workers=s["num_workers"], crop_pct=crops[n], linear_cfg=linear_cfg, dataset=n)
            m = out["metrics"]
            log.info("fewshot %s: %s (%.0fs)", n, {k: round(v, 2) for k, v in m.items() if k.endswith("mean")},
                     time.time() - t0)
            for k in shots:
                results.append({"dataset": n, "shots": k, "mean": m[f"{k}shot_mean"], "std": m[f"{k}shot_std"],
                                "seeds": list(seeds), "per_seed": [m[f"{k}shot_seed{sd}"] for sd in seeds]})
            fields[n] = out["fingerprint_fields"]
            details[n] = {"n_train": len(tr), "n_test": len(te), "num_classes": _num_classes(tr)}
        return {"metrics": {"results": results, "details": details},
                "fingerprint_fields": _merge_fields(fields, names)}

    return SuitePlan("fewshot", _plan_fields(ctx, list(names), data, conf), run, ctx.source.checkpoint_info)


def finetuned_path(out: Path) -> Path:
    return out / FINETUNE_DIR / FINETUNED_FILE


def plan_finetune(ctx: Context) -> SuitePlan:
    from canbench.evaluation.finetune import FINETUNE_SCALES, FinetuneConfig, finetune_config, run_finetune

    cfg, conf, train, val = _trained_suite_setup(ctx, "finetune", FINETUNE_SCALES, FinetuneConfig, finetune_config)
    target = finetuned_path(ctx.out)

    def run() -> dict[str, Any]:
        tr, va = train.build(ctx.img_size), val.build(ctx.img_size)
        out = run_finetune(ctx.encoder(), tr, va, cfg, _num_classes(tr), ctx.device, out_path=target,
                           dataset=ctx_label(train))
        from canbench.io import write_json

        write_json(target.parent / "source.json", {"pretrained": ctx.source.checkpoint_info(),
                                                   "dataset": ctx_label(train), "eval_config": conf,
                                                   "metrics": {k: v for k, v in out["metrics"].items()}})
        out["metrics"] = {**out["metrics"], "checkpoint": str(target), "history": out.get("history", [])}
        return out

    def stale() -> str | None:
        return None if target.is_file() else f"the finetuned checkpoint {target} is missing"

    data = {"train": train.describe(), "test": val.describe()}
    return SuitePlan("finetune", _plan_fields(ctx, ctx_label(train), data, conf), run, ctx.source.checkpoint_info,
                     stale)


def plan_shift(ctx: Context, checkpoint: Path) -> SuitePlan:
    from canbench.evaluation.shift import run_shift
    from canbench.evaluation.shift_data import NEEDS_ROOT, SHIFT_SETS, ShiftDataError

    s = copy.deepcopy(ctx.settings["shift"])
    sets = s["sets"]
    if sets is None:
        if ctx.family == "builtin":
            sets = list(BUILTIN_SHIFT_SETS)
        elif ctx.family == "imagenet":
            from canbench.evaluation.shift_data import PAPER_SETS

            sets = list(PAPER_SETS)
        else:
            raise ConfigError("shift: no sets given; set shift.sets=[...] (registered: "
                              f"{', '.join(SHIFT_SETS)}, imagenet_c) and shift.roots.<set>=/path")
    known = set(SHIFT_SETS) | {"imagenet_c"}
    for name in sets:
        if name not in known:
            raise ConfigError(f"shift.sets: unknown set {name!r} (registered: {', '.join(sorted(known))})")
    roots = {k: str(v) for k, v in (s["roots"] or {}).items()}
    for k in roots:
        if k not in known:
            raise ConfigError(f"shift.roots.{k}: unknown set {k!r} (registered: {', '.join(sorted(known))})")
    if "imagenet" in sets and "imagenet" not in roots and ctx.family == "imagenet":
        _, val = imagenet_specs(ctx.dataset, ctx.settings["data"]["root"], ctx.settings["data"]["val_root"])
        roots["imagenet"] = str(Path(val.root) / "val") if (Path(val.root) / "val").is_dir() else val.root
    for name in sets:
        if name in NEEDS_ROOT or name == "imagenet_c":
            _check_dir(f"shift set {name!r}", roots.get(name), f"shift.roots.{name}")
    options = dict(s["options"] or {})
    builtin_used = any(n.startswith("builtin") for n in sets)
    if builtin_used and "builtin_size" not in options:
        size = s["test_size"] if s["test_size"] is not None else ctx.settings["data"]["test_size"]
        if size is not None:
            options["builtin_size"] = size
    used_roots = {n: roots[n] for n in sets if n in roots}
    conf = {**P.fingerprint_config({k: v for k, v in s.items() if k not in ("sets", "test_size", "options")}),
            "options": {k: options[k] for k in sorted(options)}}

    def checkpoint_info() -> dict[str, Any]:
        return R.checkpoint_info(checkpoint, _finetuned_meta(checkpoint).get("step") if checkpoint.is_file() else None)

    def run() -> dict[str, Any]:
        if not checkpoint.is_file():
            raise ConfigError(f"shift: finetuned checkpoint {checkpoint} does not exist (run the finetune suite "
                              "or set shift.checkpoint=/path/to/finetuned.pt)")
        from canbench.evaluation.classifier import CHECKPOINT_FORMAT

        meta = _finetuned_meta(checkpoint)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"shift: {checkpoint} is not a finetuned canbench classifier")
        if any(n in NEEDS_ROOT or n == "imagenet_c" for n in sets) and int(meta.get("num_classes", 0)) != 1000:
            raise ConfigError(f"shift: the ImageNet shift sets need a 1000-class classifier; {checkpoint} has "
                              f"{meta.get('num_classes')} classes")
        try:
            out = run_shift(checkpoint, sets, used_roots, device=ctx.device, batch_size=s["batch_size"],
                            num_workers=s["num_workers"], set_options=options, dataset=list(sets))
        except ShiftDataError as e:
            raise ConfigError(str(e)) from None
        m = out["metrics"]
        res = [{"set": n, "top1": m[n]} for n in sets if n in m]
        if "imagenet_c_mce" in m:
            res.append({"set": "imagenet_c", "mCE": m["imagenet_c_mce"]})
        metrics: dict[str, Any] = {"results": res, "details": out["details"]}
        in_dist = {"builtin", "imagenet"}
        shifted = [r["top1"] for r in res if "top1" in r and r["set"] not in in_dist]
        if shifted:
            metrics["mean_shifted_top1"] = sum(shifted) / len(shifted)
        return {"metrics": metrics, "fingerprint_fields": out["fingerprint_fields"]}

    data = {"sets": list(sets), "options": {k: options[k] for k in sorted(options)}}
    fields = _plan_fields(ctx, list(sets), data, conf)
    # the model is the finetuned classifier, identified by its checkpoint's sha256 (whether it is named by a
    # run folder or by its finetune folder); the finetune result records the pretrained encoder
    fields["encoder"] = {"source": "canbench-finetuned"}
    return SuitePlan("shift", fields, run, checkpoint_info)


def _plain(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------------------------------
# Entry points


def expand_suites(suites: Sequence[str]) -> list[str]:
    """``all`` -> every suite; order kept, duplicates dropped; unknown names are errors."""
    out: list[str] = []
    for s in suites:
        names = P.SUITES if s == "all" else (s,)
        for n in names:
            if n not in P.SUITES:
                raise ConfigError(f"unknown evaluation suite {n!r} (one of {', '.join(P.SUITES)}, all)")
            if n not in out:
                out.append(n)
    return out


def build_context(source: Source, out: Path, *, scale: str | None = None, preset: str | None = None,
                  overrides: list[str] | dict[str, Any] | None = None,
                  device: str | torch.device | None = None) -> Context:
    """Settings, data family, image size and encoder description for ``source`` (no heavy work)."""
    pre = P.resolve_preset(preset)
    user = P.parse_overrides(overrides)
    cfg = source.pretrain_cfg
    if cfg is None and source.kind in ("run", "file"):
        source._load_canbench()
        cfg = source.pretrain_cfg
    if scale is not None and scale not in P.PROFILES:
        raise ConfigError(f"scale {scale!r} is not one of {', '.join(P.PROFILES)}")
    auto_scale, why = scale_of(cfg)
    profile = scale or (pre.profile if pre and pre.profile else None) or auto_scale
    if scale is None and not (pre and pre.profile):
        log.info("evaluation profile %s (from %s)", profile, why)
    scale_name = "paper" if profile == "mae" else profile
    run_layer = P.yaml_numbers((cfg.extra.eval if cfg is not None else None) or {})
    if not isinstance(run_layer, dict):
        raise ConfigError(f"extra.eval of the run config must be a mapping of evaluation settings, got {run_layer!r}")
    P.validate_settings(run_layer, "evaluation setting (extra.eval)")
    settings = P.build_settings(profile, pre.settings if pre else None, run_layer, user)
    model_keys_set = {k for layer in (pre.settings if pre else {}, run_layer, user) for k in layer.get("model", {})}
    model_cfg = None
    if source.kind == "external":
        model_cfg = external_model_config(source.external_state(), settings["model"], source.arch,
                                          pre.model if pre else None)
        img_size = model_cfg.img_size
        enc_desc = {"source": source.fmt, "arch": model_cfg.arch, "img_size": model_cfg.img_size,
                    "patch_size": model_cfg.patch_size, "class_token": model_cfg.class_token, "pool": model_cfg.pool}
    else:
        if model_keys_set:
            raise ConfigError(f"model.{sorted(model_keys_set)[0]}: model settings describe public checkpoints "
                              "(--format mae|timm); a canbench checkpoint carries its own model config")
        if source.kind == "finetuned":
            meta = _finetuned_meta(source.path)
            img_size = int(meta.get("img_size", 224))
            enc_desc = {"source": "canbench-finetuned", "model_name": meta.get("model_name"), "img_size": img_size}
        else:
            mo = cfg.model
            img_size = int(mo.img_size)
            enc_desc = {"source": "canbench", "arch": mo.arch, "img_size": mo.img_size, "patch_size": mo.patch_size,
                        "class_token": mo.class_token, "pool": mo.pool}
    dataset = settings["data"]["dataset"]
    if dataset is None:
        if cfg is not None:
            dataset = cfg.data.dataset
        elif pre is not None and pre.data.get("dataset"):
            dataset = pre.data["dataset"]
        else:
            dataset = "imagefolder"  # public checkpoints: IN-1K as <root>/{train,val}/<wnid>/*
        settings["data"]["dataset"] = dataset
    if settings["data"]["root"] is None and cfg is not None and dataset == cfg.data.dataset \
            and cfg.optim.epoch_unit != "imagenet":
        # the pretraining root is the evaluation root (IN-1K pretraining); with "ImageNet-equivalent epochs"
        # the pretraining data is something else (JFT-style) and data.root must name IN-1K explicitly
        settings["data"]["root"] = cfg.data.root
    user_keys = frozenset(f"{sec}.{k}" for layer in (pre.settings if pre else {}, run_layer, user)
                          for sec, body in layer.items() for k in body)
    return Context(source=source, out=out, settings=settings, profile=profile, scale=scale_name,
                   family=_family(dataset), dataset=dataset, img_size=img_size, encoder_desc=enc_desc,
                   device=resolve_device(device), model_cfg=model_cfg, user_keys=user_keys)


def evaluate(source: Source, suites: Sequence[str], out: str | Path | None = None, *, scale: str | None = None,
             preset: str | None = None, overrides: list[str] | dict[str, Any] | None = None, force: bool = False,
             device: str | torch.device | None = None) -> dict[str, dict[str, Any]]:
    """Plan every suite (all settings and data roots checked first), then run or skip each in order.

    Returns ``{suite: record}``: the stored result (``suite``, ``metrics``, ``fingerprint``,
    ``checkpoint``, ``created``) plus ``path`` and ``skipped`` (True when an up-to-date result existed).
    """
    if out is None:
        out = source.default_out
        if out is None:
            raise ConfigError(f"{source.path}: not inside a run folder; pass --out DIR for the results")
    out = Path(out)
    if out.name == EVAL_DIR:  # --out runs/x/eval names the eval folder itself
        out = out.parent
    names = expand_suites(suites)
    names = [n for n in P.SUITES if n in names]  # fixed order: knn, linear, fewshot, finetune, shift
    if source.kind == "finetuned":
        bad = [n for n in names if n != "shift"]
        if bad and list(suites) != ["all"]:
            raise ConfigError(f"{source.path} is a finetuned classifier: only the shift suite evaluates it "
                              f"(asked for {', '.join(bad)})")
        names = ["shift"]
    ctx = build_context(source, out, scale=scale, preset=preset, overrides=overrides, device=device)

    # shift needs a finetuned checkpoint: the source itself, shift.checkpoint, or <out>/finetune (finetune first)
    shift_ckpt: Path | None = None
    if "shift" in names:
        if source.kind == "finetuned":
            shift_ckpt = source.path
        elif ctx.settings["shift"]["checkpoint"]:
            shift_ckpt = Path(ctx.settings["shift"]["checkpoint"]).expanduser()
            if not shift_ckpt.is_file():
                raise ConfigError(f"shift.checkpoint={shift_ckpt} does not exist")
        else:
            shift_ckpt = finetuned_path(out)
    plans: dict[str, SuitePlan] = {}
    builders = {"linear": plan_linear, "knn": plan_knn, "fewshot": plan_fewshot, "finetune": plan_finetune}
    for n in names:  # plan everything before running anything: bad keys and missing roots fail here
        plans[n] = plan_shift(ctx, shift_ckpt) if n == "shift" else builders[n](ctx)
    if "shift" in names and source.kind != "finetuned" and shift_ckpt == finetuned_path(out) \
            and "finetune" not in names:
        ft = plan_finetune(ctx)
        if force or _why_rerun(ctx, ft) is not None:
            log.info("shift needs %s: running the finetune suite first", shift_ckpt)
            names.insert(names.index("shift"), "finetune")
            plans["finetune"] = ft

    done: dict[str, dict[str, Any]] = {}
    for n in names:
        plan = plans[n]
        reason = "forced (--force)" if force else _why_rerun(ctx, plan)
        if reason is None:
            rec = R.read_result(out, n)
            log.info("%s: up to date (%s), skipped", n, R.result_path(out, n))
            done[n] = {**rec, "path": str(R.result_path(out, n)), "skipped": True}
            continue
        log.info("%s: running (%s)", n, reason)
        t0 = time.time()
        res = plan.run()
        fields = dict(res["fingerprint_fields"])
        for k, v in plan.plan_fields.items():
            if k == "dataset" and fields.get("dataset") not in (None, v):
                raise RuntimeError(f"{n}: suite reported dataset {fields['dataset']!r}, planned {v!r}")
            fields[k] = v
        fp = R.make_fingerprint(fields)
        metrics = {**res["metrics"], "elapsed_s": round(time.time() - t0, 1)}
        path = R.write_result(out, n, metrics, fp, plan.checkpoint())
        log.info("%s: done in %.0fs -> %s", n, time.time() - t0, path)
        done[n] = {**R.read_result(out, n), "path": str(path), "skipped": False}
    return done


def _why_rerun(ctx: Context, plan: SuitePlan) -> str | None:
    fp = R.make_fingerprint(_plain(plan.plan_fields))
    info = plan.checkpoint()
    reason = R.why_not_done(ctx.out, plan.suite, fp, info, keys=PLAN_KEYS)
    return reason or plan.extra_done()


def run_suites(run_dir: str | Path, suites: list[str], *, scale: str | None = None,
               overrides: list[str] | dict[str, Any] | None = None, force: bool = False,
               device: str | torch.device | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate a pretraining run folder (``checkpoints/last.pt``): each suite -> ``<run_dir>/eval/<suite>.json``.

    ``scale``: evaluation profile (smoke | small | paper | mae); default from the run config
    (``extra.scale``, else the preset's scale). ``overrides``: ``["linear.epochs=90", ...]`` or a
    nested dict; the run config's ``extra.eval`` mapping is applied before them. Finished suites
    (same settings and checkpoint) are skipped unless ``force``.
    """
    source = resolve_source(run_dir)
    if source.kind != "run":
        raise ConfigError(f"run_suites needs a run folder with checkpoints/last.pt, got {run_dir}")
    return evaluate(source, suites, Path(run_dir), scale=scale, overrides=overrides, force=force, device=device)


__all__ = ["BUILTIN_FEWSHOT_SETS", "BUILTIN_SHIFT_SETS", "Context", "DataSpec", "Source", "SuitePlan",
           "build_context", "evaluate", "expand_suites", "external_model_config", "finetuned_path",
           "imagenet_specs", "resolve_source", "run_suites"]
