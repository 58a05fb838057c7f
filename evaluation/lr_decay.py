"""Layer-wise lr decay parameter groups (MAE ``util/lr_decay.py``, BEiT-style) for finetuning.

num_layers = depth + 1; a parameter in layer i gets lr_scale = decay ** (num_layers - i):
layer 0 = stem (patch / pos embeddings, cls token), layer k + 1 = block k, and everything after
the blocks (final norm, fc_norm, head) = num_layers, i.e. scale 1. Weight decay is off for 1-D
parameters and for the model's ``no_weight_decay()`` names.

Layer ids come from the model's timm ``group_matcher()`` (stem regex, ``^blocks\\.(\\d+)``, norm
last) rather than from parsing names; models without one fall back to MAE's name rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch.nn as nn


def _mae_layer_id(name: str, num_layers: int) -> int:
    """MAE ``get_layer_id_for_vit`` (fallback for models without ``group_matcher``)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def _as_rules(blocks: Any) -> list[tuple[str, Any]]:
    """timm's ``blocks`` matcher entry (regex or list of (regex, override)) as a list of pairs."""
    if isinstance(blocks, str):
        return [(blocks, None)]
    return [(b, None) if isinstance(b, str) else (b[0], b[1]) for b in blocks]


def layer_ids(model: nn.Module, names: Iterable[str] | None = None) -> tuple[dict[str, int], int]:
    """``({param name: layer id}, num_layers)`` with num_layers = len(model.blocks) + 1."""
    num_layers = len(model.blocks) + 1  # type: ignore[arg-type]
    names = list(names) if names is not None else [n for n, _ in model.named_parameters()]
    if not hasattr(model, "group_matcher"):
        return {n: _mae_layer_id(n, num_layers) for n in names}, num_layers
    matcher = model.group_matcher(coarse=False)
    if "stem" not in matcher or "blocks" not in matcher:
        raise ValueError(f"group_matcher() of {type(model).__name__} lacks 'stem' or 'blocks': {matcher}")
    stem = re.compile(matcher["stem"]) if isinstance(matcher["stem"], str) else None
    if stem is None:
        raise ValueError(f"group_matcher()['stem'] must be a regex string, got {matcher['stem']!r}")
    rules = [(re.compile(rx), ov) for rx, ov in _as_rules(matcher["blocks"])]
    out: dict[str, int] = {}
    for n in names:
        if stem.match(n):
            out[n] = 0
            continue
        out[n] = num_layers  # unmatched (head, fc_norm): after the blocks
        for rx, override in rules:
            m = rx.match(n)
            if not m:
                continue
            if override is None:
                block = int(m.group(1))
                if not 0 <= block < num_layers - 1:
                    raise ValueError(f"parameter {n!r}: block index {block} outside the {num_layers - 1} blocks")
                out[n] = block + 1
            elif tuple(override)[0] >= num_layers - 1:  # timm's (99999,): ordered after the blocks
                out[n] = num_layers
            else:
                raise ValueError(f"group_matcher() override {override!r} for {rx.pattern!r} is not supported")
            break
    return out, num_layers


def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                     no_weight_decay_list: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Optimizer param groups with ``lr_scale``, ``weight_decay``, ``layer_id`` and ``param_names``."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay={layer_decay} must be in (0, 1]")
    if no_weight_decay_list is None:
        no_weight_decay_list = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    nwd = set(no_weight_decay_list)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids, num_layers = layer_ids(model, [n for n, _ in params])
    groups: dict[str, dict[str, Any]] = {}
    for n, p in params:
        no_decay = p.ndim <= 1 or n in nwd
        lid = ids[n]
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"group_name": key, "layer_id": lid, "lr_scale": layer_decay ** (num_layers - lid),
                           "weight_decay": 0.0 if no_decay else weight_decay, "params": [], "param_names": []}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(n)
    return sorted(groups.values(), key=lambda g: (g["layer_id"], g["group_name"]))
