"""canbench.methods: shared backbone, data pipeline, CAN / SimCLR / MAE and the pretraining engine."""

from __future__ import annotations

from canbench.config import Config


def build_method(cfg: Config):
    """The pretraining module for ``cfg.method.name`` (explicit registry, see METHODS)."""
    from canbench.methods.can import CAN
    from canbench.methods.mae import MAE
    from canbench.methods.simclr import SimCLR

    methods = {"can": CAN, "simclr": SimCLR, "mae": MAE}
    return methods[cfg.method.name](cfg)


def num_views(method: str) -> int:
    """Views per image the data pipeline must produce for ``method``."""
    return 1 if method == "mae" else 2
