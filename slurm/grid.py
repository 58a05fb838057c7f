"""Grid specs: one YAML per paper table or figure, expanded into fully resolved, validated runs.

A spec names the methods, the axes (cartesian ``product``, ``zip`` and ``union`` groups over any
config key), the seeds, the evaluation suites and one profile per scale (smoke, small, paper:
preset, overrides, resources). :func:`expand` resolves every run of one scale into a
:class:`~canbench.config.Config` and validates it; any bad key or value fails *before* anything is
submitted, naming the run and the key.

Axis keys are config keys (``method.mask_ratio``) or one of three special keys:
``method`` (the method name, for rows that pair methods with other settings), ``preset`` (a preset
name, or an alias resolved through the scale profile's ``presets`` map, e.g. ``vit_l``) and
``variant`` (a free label such as Table 5's ``AN``; it only names and tags the run).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

from canbench.config import SECTIONS, Config, ConfigError, overrides_to_dict, yaml_numbers
from canbench.evaluation.recipes import DEFAULT_CROP_PCT, build_settings, trained_protocol, validate_settings
from canbench.evaluation.splits import check_root_is_read, check_setting_roots
from canbench.io import canonical_json
from canbench.methods import METHODS
from canbench.train.recipe import PRESET_DIR, build_config

from .spec import (  # noqa: F401 - spec names are re-exported: canbench.slurm.grid is the entry point
    BENCHMARKS,
    RESOURCE_DEFAULTS,
    SCALES,
    SPECIAL_AXES,
    SUITES,
    GridError,
    GridSpec,
    Resources,
    check_keys,
    closest,
    deep_merge,
    group_keys,
    load_spec,
    nest,
    parse_spec,
    split_overrides,
)


@dataclass
class Run:
    """One fully resolved run of a grid."""

    name: str
    run_id: str
    method: str
    seed: int
    axes: dict[str, Any]
    cfg: Config
    suites: list[str] = field(default_factory=list)

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.run_id}"


def _group_points(g: dict[str, Any], values: dict[str, list], where: str) -> list[dict[str, tuple[Any, Any]]]:
    """The points of a group: {key: (the spec's value, the value used at this scale)}."""
    kind, body = next(iter(g.items()))
    if kind == "union":
        return [p for x in body for p in _group_points(x, values, where)]
    keys = list(body)
    vals = {}
    for k in keys:
        vals[k] = values.get(k, body[k])
        if len(vals[k]) != len(body[k]):
            raise GridError(f"{where}.axis_values.{k} has {len(vals[k])} values; the axis has {len(body[k])}")
    pairs = {k: list(zip(body[k], vals[k])) for k in keys}
    if kind == "zip":
        return [{k: pairs[k][i] for k in keys} for i in range(len(body[keys[0]]))]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[pairs[k] for k in keys])]


def config_keys() -> dict[str, set[str]]:
    """Valid ``section.field`` config keys, per section."""
    cfg = Config()
    return {s: {f.name for f in fields(getattr(cfg, s))} for s in SECTIONS}


def check_axis_key(key: str) -> None:
    """Raise ConfigError unless ``key`` is a special axis or an existing ``section.field`` config key."""
    if key in SPECIAL_AXES:
        return
    keys = config_keys()
    section, _, name = key.partition(".")
    if section not in keys or not name or "." in name:
        all_keys = [f"{s}.{n}" for s, ns in keys.items() for n in ns] + list(SPECIAL_AXES)
        raise ConfigError(f"unknown axis key {key!r}{closest(key, all_keys)}")
    if name not in keys[section]:
        raise ConfigError(f"unknown config key {key!r}{closest(name, keys[section])}")


def run_id_of(cfg_dict: dict[str, Any]) -> str:
    """Deterministic short id: sha256 of the canonical JSON of the resolved config (minus the id itself)."""
    d = copy.deepcopy(cfg_dict)
    d.get("extra", {}).pop("run_id", None)
    return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:10]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "x".join(_fmt(x) for x in v)
    return str(v)


def _run_name(method: str, named: list[tuple[str, Any]], seed: int, names: dict[str, str]) -> str:
    parts = [method]
    for key, value in named:
        if key in ("variant", "preset"):
            parts.append(_fmt(value))
        else:
            parts.append(f"{names.get(key, key.split('.')[-1])}{_fmt(value)}")
    parts.append(f"s{seed}")
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", "-".join(parts))


def expand(spec: GridSpec, scale: str, overrides: list[str] | None = None, world_size: int = 1,
           check_paths: bool = True) -> list[Run]:
    """All runs of ``scale``: resolved, validated and deduplicated, in spec order.

    Order of precedence: preset <- profile overrides <- preset-alias overrides <- ``overrides``
    (``--set``) <- axis values.
    Raises GridError naming the run and the key on the first invalid run.
    """
    prof = spec.profile(scale)
    cfg_overrides, _ = split_overrides(overrides or [])
    eval_items = [t for t in cfg_overrides if t.split("=", 1)[0].strip().startswith("eval.")]
    cfg_overrides = [t for t in cfg_overrides if t not in eval_items]
    for text in cfg_overrides:
        if text.split("=", 1)[0].strip().startswith("extra."):
            raise GridError(f"grid {spec.name!r}: --set {text.split('=', 1)[0].strip()}: the run record (extra) is "
                            "written by the grid; evaluation settings are set with --set eval.SECTION.KEY=VALUE")
    cli = overrides_to_dict(cfg_overrides) if cfg_overrides else {}
    cli_eval = overrides_to_dict(eval_items)["eval"] if eval_items else {}
    axis_keys = group_keys({"union": spec.axes}) if spec.axes else set()
    for text in cfg_overrides:
        k = text.split("=", 1)[0].strip()
        if k in axis_keys:
            raise GridError(f"grid {spec.name!r}: --set {k} overrides an axis of the grid; edit the spec instead")
    base = nest(prof.get("overrides") or {})
    points: list[dict[str, tuple[Any, Any]]] = [{}]
    values = prof.get("axis_values") or {}
    for g in spec.axes:
        points = [dict(p, **q) for p in points for q in _group_points(g, values, f"grid {spec.name!r}: scales.{scale}")]
    methods = spec.methods or [None]
    seeds = prof.get("seeds", spec.seeds)
    presets = prof.get("presets") or {}
    eval_settings = deep_merge(deep_merge(nest(spec.eval), nest(prof.get("eval") or {})), cli_eval)
    try:
        validate_settings(yaml_numbers(copy.deepcopy(eval_settings)), "evaluation setting")
        if check_paths:  # evaluation data roots exist before anything trains
            check_setting_roots(eval_settings)
    except ConfigError as exc:
        raise GridError(f"grid {spec.name!r}, scale {scale!r}: eval: {exc}") from None
    checked_eval: set[int] = set()  # encoder image sizes whose full evaluation recipe was checked
    runs: list[Run] = []
    trained: dict[str, str] = {}  # training-config hash -> run name (dedup of shared points)
    names: set[str] = set()
    covered = _variant_covered(spec.axes)
    for method0 in methods:
        for point in points:
            for seed in seeds:
                suites = spec.suites_for(scale, seed)
                nominal = {k: nv for k, (nv, _) in point.items()}  # the spec's value: the paper's cell
                actual = {k: av for k, (_, av) in point.items()}  # the value used at this scale
                method = actual.get("method", method0)
                # a variant label stands for the other keys of its group (Table 5's AN, CN, ...)
                label_keys = [k for k in point if k != "method" and k not in covered]
                name = _run_name(str(method), [(k, nominal[k]) for k in label_keys], seed, spec.names)
                try:
                    for k in point:
                        check_axis_key(k)
                    if method not in METHODS:
                        raise ConfigError(f"unknown method {method!r}{closest(str(method), METHODS)}")
                    preset, alias_overrides = resolve_preset(actual.get("preset", prof.get("preset")), presets)
                    upd = copy.deepcopy(base)
                    deep_merge(upd, alias_overrides)
                    deep_merge(upd, cli)
                    deep_merge(upd, nest({k: v for k, v in actual.items() if k not in SPECIAL_AXES}))
                    deep_merge(upd, {"train": {"seed": seed}})
                    cfg = build_config(method, _preset_file(preset), upd, validate_paths=check_paths,
                                       world_size=world_size)
                    cfg.extra.preset = preset
                    if check_paths and suites:
                        _check_eval_data(cfg, eval_settings.get("data") or {})
                    if suites and cfg.model.img_size not in checked_eval:
                        _check_eval(eval_settings, scale, cfg.model.img_size, suites)
                        checked_eval.add(cfg.model.img_size)
                except ConfigError as exc:
                    raise GridError(f"grid {spec.name!r}, scale {scale!r}, run {name!r}: {exc}") from None
                key = run_id_of(cfg.to_dict())
                if key in trained:  # the same training config reached twice (a point shared by sweeps)
                    continue
                trained[key] = name
                axes = dict(nominal)
                for k in sorted(axis_keys - set(point)):  # union groups: the resolved value of the other axes
                    if k not in SPECIAL_AXES:
                        section, _, fld = k.partition(".")
                        axes[k] = getattr(getattr(cfg, section), fld)
                if "method" in axis_keys:
                    axes["method"] = method
                scaled = {k: actual[k] for k in point if actual[k] != nominal[k]}
                rec = cfg.extra
                rec.benchmark, rec.grid, rec.scale, rec.run_name = spec.benchmark, spec.name, scale, name
                rec.axes, rec.suites = _plain(axes), list(suites)
                rec.axes_scaled = _plain(scaled) or None
                rec.eval = copy.deepcopy(eval_settings) or None
                rid = run_id_of(cfg.to_dict())
                rec.run_id = rid
                if name in names:
                    raise GridError(f"grid {spec.name!r}, scale {scale!r}: two different runs are named {name!r}; "
                                    "add a 'variant' axis or a 'names' entry to tell them apart")
                names.add(name)
                runs.append(Run(name=name, run_id=rid, method=str(method), seed=seed, axes=axes, cfg=cfg,
                                suites=list(suites)))
    return runs


def _check_eval(eval_settings: dict[str, Any], scale: str, img_size: int, suites: list[str]) -> None:
    """The evaluation recipe the run will resolve, checked now (ranges included: ``linear.epochs: -1`` or
    ``.inf``), so a bad eval setting fails at submit time instead of after hours of pretraining."""
    try:
        layer = yaml_numbers(copy.deepcopy(eval_settings))
        settings = build_settings(scale, layer)
        user_keys = frozenset(f"{s}.{k}" for s, body in layer.items() if isinstance(body, dict) for k in body)
        for section in ("linear", "finetune"):
            if section in suites or (section == "finetune" and "shift" in suites):
                trained_protocol(section, settings, scale, img_size, DEFAULT_CROP_PCT, user_keys)
    except ConfigError as exc:
        raise ConfigError(f"eval: {exc}") from None


def _check_eval_data(cfg: Config, data: dict[str, Any]) -> None:
    """An evaluation data root (``eval.data.root``) for a run evaluated on generated data would be ignored: an
    error before anything trains (the evaluation data set defaults as in canbench.evaluation.context)."""
    dataset = data.get("dataset") or ("imagefolder" if cfg.data.dataset == "jft" else cfg.data.dataset)
    origin = "eval.data.dataset" if data.get("dataset") else "the run's data.dataset"
    check_root_is_read(dataset, SimpleNamespace(root=data.get("root"), val_root=data.get("val_root")), origin,
                       prefix="eval.data.")


def _preset_file(name: str) -> str:
    """A shipped preset's YAML path (parsing one file instead of all of them per run), else ``name``."""
    if str(name).endswith((".yaml", ".yml")):
        return name
    p = PRESET_DIR / f"{name}.yaml"
    return str(p) if p.is_file() else name


def _variant_covered(groups: list[dict[str, Any]]) -> set[str]:
    """Keys that share a group with a ``variant`` axis: the variant label names them."""
    out: set[str] = set()
    for g in groups:
        kind, body = next(iter(g.items()))
        if kind == "union":
            out |= _variant_covered(body)
        elif "variant" in body:
            out |= set(body) - {"variant"}
    return out


def resolve_preset(name: str, presets: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A preset alias of the scale profile -> (preset name, overrides); other names pass through."""
    target = presets.get(name, name)
    if isinstance(target, dict):
        check_keys(target, ("preset", "overrides"), f"presets.{name}")
        if not isinstance(target.get("preset"), str):
            raise ConfigError(f"presets.{name} needs a 'preset' name")
        return target["preset"], nest(target.get("overrides") or {})
    if not isinstance(target, str):
        raise ConfigError(f"preset {name!r} must be a preset name, got {target!r}")
    return target, {}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def expand_all(spec: GridSpec, scale: str, overrides: list[str] | None = None,
               resources: Resources | None = None, world_size: int | None = None) -> list[Run]:
    """Validate every scale (data paths only for ``scale``) and return the runs of ``scale``."""
    spec.profile(scale)  # an unknown scale fails first
    if world_size is None:
        world_size = resources.world_size if resources is not None else 1
    out: list[Run] = []
    for s in spec.scales:
        ws = world_size if s == scale else spec.resources(s).world_size
        runs = expand(spec, s, overrides if s == scale else None, world_size=ws, check_paths=(s == scale))
        if s == scale:
            out = runs
    return out


__all__ = ["BENCHMARKS", "GridError", "GridSpec", "RESOURCE_DEFAULTS", "Resources", "Run", "SCALES", "SUITES",
           "check_axis_key", "expand", "expand_all", "load_spec", "parse_spec", "run_id_of", "split_overrides"]
