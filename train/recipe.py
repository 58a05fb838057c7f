"""A training run's recipe: presets, the method's defaults and ``--set`` overrides resolved into one validated config.

Layers, later wins: the schema's defaults (:mod:`canbench.config`) <- the preset's common ``config``
section <- its per-method section <- overrides; then every ``method.*`` key left unset takes the
method class's default (:mod:`canbench.methods`) and the arch fills the image and patch size. The result
is validated as a whole: the shared ranges, the method's rules, the built-in data set's version and
(unless told not to) the data root. A preset is a YAML file in ``train/presets/`` (or any path) with
``description``, ``scale`` (one of :data:`canbench.config.SCALES`), ``config`` and ``methods``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canbench.config import (
    ARCHS,
    SCALES,
    Config,
    ConfigError,
    apply,
    check_choice,
    closest,
    overrides_to_dict,
)
from canbench.data.builtin import BUILTIN_VERSION
from canbench.data.datasets import DATASETS, check_dataset_layout
from canbench.io import read_yaml
from canbench.methods import METHODS, method_class

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESET_KEYS = ("description", "config", "methods", "scale")


def preset_path(name_or_path: str) -> Path:
    """The YAML file of a shipped preset (by name) or of a path; ConfigError naming it when missing."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"preset file not found: {p}")
        return p
    p = PRESET_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}{closest(name_or_path, preset_names())}")
    return p


def preset_names() -> list[str]:
    return sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The raw preset mapping of a name (``smoke``) or YAML path (reads one file), its keys checked."""
    raw = read_yaml(preset_path(name_or_path), mapping=True)
    for k in raw:
        if k not in PRESET_KEYS:
            raise ConfigError(f"preset {name_or_path!r}: unknown top-level key {k!r}{closest(k, PRESET_KEYS)}")
    if raw.get("scale") is not None:
        check_choice(f"preset {name_or_path!r}: scale", raw["scale"], SCALES)
    return raw


def list_presets() -> dict[str, dict[str, Any]]:
    """name -> parsed preset YAML, for every preset that ships with the package."""
    return {name: load_preset(name) for name in preset_names()}


def build_config(method: str, preset: str | None = None, overrides: list[str] | dict | None = None,
                 validate_paths: bool = True, world_size: int = 1) -> Config:
    """Schema defaults <- preset (common part, then its per-method part) <- overrides <- method defaults; validated
    once, for ``world_size`` ranks."""
    method_class(method)
    cfg = Config()
    cfg.method.name = method
    if preset:
        raw = load_preset(preset)
        where = f"preset {str(preset_path(preset))!r}"
        try:
            apply(cfg, raw.get("config") or {}, prefix="config." if not isinstance(raw.get("config"), dict) else "")
            per_method = raw.get("methods") or {}
            if not isinstance(per_method, dict):
                raise ConfigError(f"methods: expected a mapping of method names to sections, got {per_method!r}")
            for m in per_method:
                if m not in METHODS:
                    raise ConfigError(f"unknown method section {m!r}{closest(m, METHODS)}")
            apply(cfg, per_method.get(method) or {})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if cfg.extra.preset is None:
            cfg.extra.preset = preset
    if overrides:
        upd = overrides if isinstance(overrides, dict) else overrides_to_dict(overrides)
        name = (upd.get("method") or {}).get("name") if isinstance(upd.get("method"), dict) else None
        if name is not None and name != method:
            raise ConfigError(f"method.name={name!r} contradicts the method {method!r}")
        apply(cfg, upd)
    resolve_defaults(cfg)
    if cfg.data.dataset == "builtin" and cfg.data.builtin_version is None:
        cfg.data.builtin_version = BUILTIN_VERSION  # recorded, so runs on another version are never mixed
    validate(cfg, world_size=world_size, check_paths=validate_paths)
    return cfg


def config_from_dict(d: dict[str, Any], validate_paths: bool = False) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (checkpoints, run folders)."""
    cfg = Config()
    apply(cfg, d)
    resolve_defaults(cfg)
    validate(cfg, check_paths=validate_paths)
    return cfg


def resolve_defaults(cfg: Config) -> None:
    """Fill the ``method.*`` keys left None with the method's defaults and the image / patch size with the arch's."""
    cls = method_class(cfg.method.name, "method.name")
    for k, v in cls.defaults.items():
        if getattr(cfg.method, k) is None:
            setattr(cfg.method, k, v)
    arch = ARCHS.get(cfg.model.arch)
    if arch is None:
        raise ConfigError(f"model.arch: unknown architecture {cfg.model.arch!r}{closest(cfg.model.arch, ARCHS)}")
    if cfg.model.img_size is None:
        cfg.model.img_size = arch["img_size"]
    if cfg.model.patch_size is None:
        cfg.model.patch_size = arch["patch_size"]


def validate(cfg: Config, world_size: int = 1, check_paths: bool = True) -> None:
    """Raise ConfigError on the first invalid value, naming the key and the allowed range."""
    cls = method_class(cfg.method.name, "method.name")
    cfg.validate(world_size)
    cls.check(cfg, world_size)
    d = cfg.data
    if d.builtin_version is not None:
        if d.dataset != "builtin":
            raise ConfigError(f"data.builtin_version={d.builtin_version!r} is set, but data.dataset={d.dataset!r}")
        if d.builtin_version != BUILTIN_VERSION:
            raise ConfigError(f"data.builtin_version={d.builtin_version!r}: this checkout renders version "
                              f"{BUILTIN_VERSION} of the built-in data set (data/builtin.py); a run made on "
                              "another version cannot be trained or resumed here")
    if check_paths:
        check_data_root(d)


def check_data_root(d: Any) -> None:
    """The pretraining data before any work: a set that needs a root has one that exists and holds the set's
    layout (:func:`canbench.data.datasets.check_dataset_layout`); a generated set (built-in, digits) given a root
    is an error too, since the root would be ignored and the run would train on other data than meant."""
    spec = DATASETS.get(d.dataset)
    if spec is not None and not spec.needs_root:
        if d.root:
            raise ConfigError(f"data.root={d.root!r} is set, but data.dataset={d.dataset!r} is generated and reads no "
                              "root: set data.dataset to the data set that root holds (e.g. data.dataset=imagefolder) "
                              "or leave data.root unset")
        return
    if not d.root:
        raise ConfigError(f"data.root must be set for data.dataset={d.dataset!r}")
    if not Path(d.root).is_dir():
        raise ConfigError(f"data.root={d.root!r} does not exist or is not a folder (data.dataset={d.dataset!r})")
    try:
        check_dataset_layout(d.dataset, d.root, d.split)
    except ConfigError as e:
        raise ConfigError(f"data.root={d.root!r} does not hold data set {d.dataset!r}: {e}") from None


def scale_of(cfg: Config | None) -> tuple[str, str]:
    """The scale profile of a run and where it came from: the run record's ``scale``, else its preset's, else
    by data set and size (the built-in set: smoke for ViT-micro, small otherwise; real data: paper).
    A public checkpoint (no config) is paper scale."""
    if cfg is None:
        return "paper", "public checkpoint (default)"
    if cfg.extra.scale in SCALES:
        return cfg.extra.scale, "extra.scale"
    if cfg.extra.preset:
        try:
            s = load_preset(cfg.extra.preset).get("scale")
        except ConfigError:
            s = None
        if s in SCALES:
            return s, f"preset {cfg.extra.preset!r}"
    spec = DATASETS.get(cfg.data.dataset)
    if spec is not None and not spec.needs_root:  # the built-in family and digits
        return ("smoke" if cfg.model.arch == "vit_micro" else "small"), f"data.dataset={cfg.data.dataset}"
    return "paper", f"data.dataset={cfg.data.dataset}"


__all__ = ["PRESET_DIR", "build_config", "check_data_root", "config_from_dict", "list_presets", "load_preset",
           "preset_names", "preset_path", "resolve_defaults", "scale_of", "validate"]
