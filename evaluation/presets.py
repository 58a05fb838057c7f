"""Evaluation settings: scale profiles, eval presets, and validated ``--set section.key=value`` overrides.

The settings of one ``canbench evaluate`` / :func:`canbench.evaluation.suites.run_suites` call are a
nested mapping with the sections below, layered (later wins): the scale profile (``smoke``,
``small``, ``paper``; ``mae`` = paper with MAE's linear-probe / finetune variants) <- an eval preset
file (``--preset my_eval.yaml``) <- the pretraining config's ``extra.eval`` mapping (how a grid spec
passes data roots to its runs) <- ``--set`` overrides. Unknown sections and keys are errors naming
the key (:class:`canbench.config.ConfigError`); ``linear.*`` / ``finetune.*`` accept the fields of
``LinearProbeConfig`` / ``FinetuneConfig`` plus ``protocol`` (the named protocol variant they start from).

========== ===========================================================================================
section    keys
========== ===========================================================================================
data       dataset, root, val_root, train_size, test_size (the linear / kNN / finetune data)
model      arch, img_size, patch_size, class_token, pool (public checkpoints only: ``--format``)
linear     protocol (paper | mae | small | smoke) + LinearProbeConfig fields
knn        k, temperature, crop_pct, batch_size, num_workers
fewshot    datasets, root, roots.<name>, shots, seeds, head, linear_head.<key>, crop_pct, train_size,
           test_size, batch_size, num_workers
finetune   protocol (paper | mae | small | smoke) + FinetuneConfig fields
shift      sets, roots.<set>, checkpoint, options.<key>, test_size, batch_size, num_workers
========== ===========================================================================================
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any

from canbench.config import ConfigError, deep_merge, overrides_to_dict, yaml_numbers

SUITES = ("knn", "linear", "fewshot", "finetune", "shift")  # the order ``all`` runs them in
SCALES = ("smoke", "small", "paper")
PROFILES = SCALES + ("mae",)
SECTIONS = ("data", "model") + SUITES

# Values a key may take: a type (or tuple of types), "list" / "dict" (any items), or a choice tuple of strings.
_INT, _FLOAT, _STR, _BOOL = (int,), (int, float), (str,), (bool,)
_OPT = type(None)
SCHEMA: dict[str, dict[str, Any]] = {
    "data": {"dataset": _STR + (_OPT,), "root": _STR + (_OPT,), "val_root": _STR + (_OPT,),
             "train_size": _INT + (_OPT,), "test_size": _INT + (_OPT,)},
    "model": {"arch": _STR + (_OPT,), "img_size": _INT + (_OPT,), "patch_size": _INT + (_OPT,),
              "class_token": _BOOL + (_OPT,), "pool": ("avg", "cls")},
    "knn": {"k": _INT, "temperature": _FLOAT, "crop_pct": _FLOAT + (_OPT,), "batch_size": _INT,
            "num_workers": _INT},
    "fewshot": {"datasets": "list", "root": _STR + (_OPT,), "roots": "dict", "shots": "list", "seeds": "list",
                "head": ("lsr", "linear"), "linear_head": "dict", "crop_pct": _FLOAT + (_OPT,),
                "train_size": _INT + (_OPT,), "test_size": _INT + (_OPT,), "batch_size": _INT, "num_workers": _INT},
    "shift": {"sets": "list", "roots": "dict", "checkpoint": _STR + (_OPT,), "options": "dict",
              "test_size": _INT + (_OPT,), "batch_size": _INT, "num_workers": _INT},
}
# Keys that change how fast a suite runs, never its numbers: kept out of the fingerprint.
RUNTIME_KEYS = frozenset({"batch_size", "num_workers", "eval_batch_size", "root", "roots", "val_root",
                          "checkpoint"})


def _dataclass_keys(section: str) -> set[str]:
    if section == "linear":
        from canbench.evaluation.linear import LinearProbeConfig as cls
    else:
        from canbench.evaluation.finetune import FinetuneConfig as cls
    return {f.name for f in dataclasses.fields(cls)} | {"protocol"}


# Scale profiles. Sizes that are None mean "the data set's default"; the builtin train size defaults to
# the pretraining run's data.builtin_size. img_size always follows the encoder (no resolution change).
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
        "knn": {},
        "fewshot": {"shots": [1, 5, 10, 25]},
        "shift": {},
        "data": {"test_size": None},
    },
    "small": {
        "linear": {"protocol": "small"},
        "finetune": {"protocol": "small"},
        "knn": {}, "fewshot": {"shots": [1, 5, 10, 25]}, "shift": {}, "data": {},
    },
    "paper": {
        "linear": {"protocol": "paper"},
        "finetune": {"protocol": "paper"},
        "knn": {}, "fewshot": {"shots": [1, 5, 10, 25]}, "shift": {}, "data": {},
    },
    "mae": {
        "linear": {"protocol": "mae"},
        "finetune": {"protocol": "mae"},
        "knn": {}, "fewshot": {"shots": [1, 5, 10, 25]}, "shift": {}, "data": {},
    },
}
SUITE_DEFAULTS: dict[str, dict[str, Any]] = {
    "knn": {"k": 20, "temperature": 0.07, "crop_pct": None, "batch_size": 256, "num_workers": 0},
    "fewshot": {"datasets": None, "root": None, "roots": {}, "shots": [1, 5, 10, 25], "seeds": [0, 1, 2],
                "head": "lsr", "linear_head": {}, "crop_pct": None, "train_size": None, "test_size": None,
                "batch_size": 256, "num_workers": 0},
    "shift": {"sets": None, "roots": {}, "checkpoint": None, "options": {}, "test_size": None, "batch_size": 128,
              "num_workers": 0},
    "data": {"dataset": None, "root": None, "val_root": None, "train_size": None, "test_size": None},
    "model": {"arch": None, "img_size": None, "patch_size": None, "class_token": None, "pool": "avg"},
    "linear": {}, "finetune": {},
}


def _closest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else (
        f" (valid: {', '.join(sorted(options))})")


def _check_value(key: str, value: Any, spec: Any) -> None:
    if spec == "list":  # None: the suite's default list
        if value is not None and not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list like [a,b], got {value!r}")
    elif spec == "dict":
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({key}.<name>=value), got {value!r}")
    elif isinstance(spec, tuple) and spec and all(isinstance(s, str) for s in spec):
        if value not in spec:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, spec))}")
    else:
        ok = isinstance(value, spec) and not (isinstance(value, bool) and bool not in spec)
        if not ok:
            names = "/".join("None" if t is _OPT else t.__name__ for t in spec)
            raise ConfigError(f"{key}: expected {names}, got {value!r}")


def validate_settings(settings: dict[str, Any], where: str = "evaluation setting") -> None:
    """Raise ConfigError naming the first unknown section / key or ill-typed value."""
    for section, body in settings.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown {where} section {section!r}{_closest(section, SECTIONS)}; "
                              f"keys look like linear.epochs=90 or data.root=/datasets/imagenet")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected keys ({section}.<key>=value), got {body!r}")
        if section in ("linear", "finetune"):
            keys = _dataclass_keys(section)
            for k in body:
                if k not in keys:
                    raise ConfigError(f"unknown {where} {section}.{k}{_closest(k, keys)}")
            continue
        schema = SCHEMA[section]
        for k, v in body.items():
            if k not in schema:
                raise ConfigError(f"unknown {where} {section}.{k}{_closest(k, schema)}")
            _check_value(f"{section}.{k}", v, schema[k])


@dataclasses.dataclass
class EvalPreset:
    """What ``--preset`` named: a scale profile, plus settings and (pretraining presets) model / data defaults."""

    name: str
    scale: str | None = None  # smoke | small | paper (the profile "mae" is paper scale)
    profile: str | None = None  # smoke | small | paper | mae
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # pretraining preset's model section
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # pretraining preset's data section


def resolve_preset(name: str | None) -> EvalPreset | None:
    """``--preset``: a profile (smoke, small, paper, mae), a pretraining preset (its ``scale``; model and data
    sections as defaults for public checkpoints) or an eval YAML file (``scale`` / ``profile`` + sections)."""
    if not name:
        return None
    if name in PROFILES:
        return EvalPreset(name, scale="paper" if name == "mae" else name, profile=name)
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        import yaml

        with open(p) as f:
            raw = yaml_numbers(yaml.safe_load(f) or {})
        if not isinstance(raw, dict):
            raise ConfigError(f"eval preset {p}: expected a mapping")
        if "config" in raw or "methods" in raw:  # a pretraining preset file
            return _from_pretrain_preset(str(p), raw)
        profile = raw.pop("profile", None) or raw.get("scale")
        scale = raw.pop("scale", None) or ("paper" if profile == "mae" else profile)
        raw.pop("description", None)
        if profile is not None and profile not in PROFILES:
            raise ConfigError(f"eval preset {p}: profile/scale {profile!r} is not one of {PROFILES}")
        validate_settings(raw, f"eval preset {p} key")
        return EvalPreset(str(p), scale=scale, profile=profile, settings=raw)
    from canbench.train.recipe import load_preset

    try:
        raw = load_preset(name)
    except ConfigError as e:
        raise ConfigError(f"--preset {name!r}: not an evaluation profile ({', '.join(PROFILES)}), "
                          f"nor an eval YAML file; as a pretraining preset: {e}") from None
    return _from_pretrain_preset(name, raw)


def _from_pretrain_preset(name: str, raw: dict[str, Any]) -> EvalPreset:
    scale = raw.get("scale")
    if scale not in SCALES:
        raise ConfigError(f"preset {name!r} has scale {scale!r}; expected one of {SCALES}")
    cfg = raw.get("config") or {}
    return EvalPreset(name, scale=scale, profile=scale, model=dict(cfg.get("model") or {}),
                      data=dict(cfg.get("data") or {}))


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["linear.epochs=90", "fewshot.roots.dtd=/d"]`` (or a nested dict) -> validated nested dict."""
    if not overrides:
        return {}
    out = overrides_to_dict(list(overrides)) if not isinstance(overrides, dict) else yaml_numbers(overrides)
    validate_settings(out)
    return out


def build_settings(profile: str, *layers: dict[str, Any] | None) -> dict[str, Any]:
    """Suite defaults <- ``PROFILE_SETTINGS[profile]`` <- each layer; validated."""
    if profile not in PROFILE_SETTINGS:
        raise ConfigError(f"evaluation profile {profile!r} is not one of {PROFILES}")
    out = copy.deepcopy(SUITE_DEFAULTS)
    deep_merge(out, PROFILE_SETTINGS[profile])
    for layer in layers:
        if layer:
            validate_settings(layer)
            deep_merge(out, layer)
    validate_settings({k: v for k, v in out.items() if k in SECTIONS})
    return out


def fingerprint_config(section: dict[str, Any]) -> dict[str, Any]:
    """A suite's settings without the keys that only affect speed or file locations."""
    return {k: v for k, v in sorted(section.items()) if k not in RUNTIME_KEYS}


__all__ = ["EvalPreset", "PROFILES", "PROFILE_SETTINGS", "SCALES", "SECTIONS", "SUITES", "SUITE_DEFAULTS",
           "build_settings", "deep_merge", "fingerprint_config", "parse_overrides", "resolve_preset",
           "validate_settings"]
