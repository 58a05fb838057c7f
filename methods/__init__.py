"""canbench.methods: the shared ViT backbone, decoder and heads, and the pretraining methods.

:data:`METHODS` is the registry: a method is a :class:`~canbench.methods.base.PretrainMethod` subclass
in a module of its own that carries its defaults, rules, view count and loss terms. Adding one is
that module plus one line here (docs/architecture.md shows an example).
"""

from __future__ import annotations

from canbench.config import Config, ConfigError, closest
from canbench.methods.base import PretrainMethod
from canbench.methods.can import CAN
from canbench.methods.mae import MAE
from canbench.methods.simclr import SimCLR

METHODS: dict[str, type[PretrainMethod]] = {m.name: m for m in (CAN, SimCLR, MAE)}


def method_class(name: str, key: str = "method") -> type[PretrainMethod]:
    """The registered class of method ``name``; a ConfigError naming ``key`` and the closest names otherwise."""
    cls = METHODS.get(name)
    if cls is None:
        raise ConfigError(f"{key}: unknown method {name!r}{closest(name, METHODS)}")
    return cls


def build_method(cfg: Config) -> PretrainMethod:
    """The pretraining module of ``cfg.method.name``."""
    return method_class(cfg.method.name, "method.name")(cfg)


def loss_term_names() -> dict[str, str]:
    """Every registered method's loss terms -> the names tables use (``infonce`` -> ``contrastive_loss``)."""
    out: dict[str, str] = {}
    for cls in METHODS.values():
        out.update(cls.loss_terms)
    return out


__all__ = ["METHODS", "PretrainMethod", "build_method", "loss_term_names", "method_class"]
