"""``--preset`` for evaluation: an evaluation profile, a pretraining preset, or an eval YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canbench.config import SCALES, ConfigError, yaml_numbers
from canbench.evaluation.recipes import PROFILES, validate_settings
from canbench.io import read_yaml


@dataclass
class EvalPreset:
    """What ``--preset`` named: a scale profile, plus settings and (pretraining presets) model / data defaults."""

    name: str
    scale: str | None = None  # smoke | small | paper (the profile "mae" is paper scale)
    profile: str | None = None  # smoke | small | paper | mae
    settings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # pretraining preset's model section
    data: dict[str, Any] = field(default_factory=dict)  # pretraining preset's data section


def resolve_preset(name: str | None) -> EvalPreset | None:
    """``--preset``: a profile (smoke, small, paper, mae), a pretraining preset (its ``scale``; model and data
    sections as defaults for public checkpoints) or an eval YAML file (``scale`` / ``profile`` + sections)."""
    if not name:
        return None
    if name in PROFILES:
        return EvalPreset(name, scale="paper" if name == "mae" else name, profile=name)
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        raw = yaml_numbers(read_yaml(p, mapping=True))
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
    for key, section in (("config", cfg), *((f"config.{k}", cfg.get(k) or {}) for k in ("model", "data")
                                           if isinstance(cfg, dict))):
        if not isinstance(section, dict):
            raise ConfigError(f"preset {name!r}: {key}: expected a mapping of keys, got {section!r}")
    return EvalPreset(name, scale=scale, profile=scale, model=dict(cfg.get("model") or {}),
                      data=dict(cfg.get("data") or {}))


__all__ = ["EvalPreset", "resolve_preset"]
