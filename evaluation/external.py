"""Public checkpoints (facebookresearch/mae, timm ViTs) into the shared encoder or the finetune classifier.

Every key of the source state dict must match one rule of an explicit table (kept, dropped, or
adapted); an unknown key is an error, and the final load is strict, so the error lists the
unexpected and missing keys by name. Files are always read with ``torch.load(weights_only=True)``
(or safetensors).

Frozen-feature suites pool a public checkpoint as its format's own protocol does (:data:`PROTOCOL_POOL`:
MAE's linear probe reads the cls token); ``model.pool`` overrides it.

MAE checkpoints are ``{"model": state_dict, ...}``. Pretraining ones hold ``cls_token``,
``pos_embed`` (1, 1 + L, D; the cls row first), ``patch_embed.proj.*``, ``blocks.*``, ``norm.*``
plus ``mask_token`` and ``decoder_*`` (dropped). Finetuned ones (global pool) hold ``fc_norm.*`` and
``head.*`` instead of ``norm.*``. When the target has no cls token, ``cls_token`` is dropped and the
cls row of ``pos_embed`` removed. No resolution change: pos_embed lengths must otherwise agree.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from canbench.config import ARCHS, ConfigError, ModelConfig
from canbench.io import torch_load

_BLOCK = r"^blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|attn\.q_norm|attn\.k_norm|mlp\.fc1|mlp\.fc2|ls1|ls2)\."
# (regex, action) per source format; actions: keep | drop | pos | cls | head (kept only for classifiers)
# | norm (kept for encoders, dropped for classifiers: MAE finetuning replaces it by fc_norm)
RULES: dict[str, list[tuple[str, str]]] = {
    "mae": [
        (r"^mask_token$", "drop"), (r"^decoder_", "drop"),  # MAE pretraining only
        (r"^cls_token$", "cls"), (r"^pos_embed$", "pos"), (r"^patch_embed\.proj\.(weight|bias)$", "keep"),
        (_BLOCK, "keep"), (r"^norm\.(weight|bias)$", "norm"), (r"^fc_norm\.(weight|bias)$", "head"),
        (r"^head\.(weight|bias)$", "head"),
    ],
    "timm": [
        (r"^cls_token$", "cls"), (r"^pos_embed$", "pos"), (r"^patch_embed\.proj\.(weight|bias)$", "keep"),
        (_BLOCK, "keep"), (r"^norm\.(weight|bias)$", "norm"), (r"^fc_norm\.(weight|bias)$", "head"),
        (r"^head\.(weight|bias)$", "head"),
    ],
}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``; ``model`` /
    ``state_dict`` wrappers unwrapped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    obj = torch_load(p)
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p} does not hold a state dict of tensors (top-level keys: "
                         f"{sorted(obj)[:20] if isinstance(obj, dict) else type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _adapt_pos(v: torch.Tensor, want: torch.Size, key: str) -> torch.Tensor:
    if v.shape == want:
        return v
    if v.ndim == 3 and v.shape[1] == want[1] + 1 and v.shape[2] == want[2]:
        return v[:, 1:].clone()  # source has a cls position, target does not
    raise ValueError(f"{key}: source shape {tuple(v.shape)} cannot map to target {tuple(want)} "
                     "(different resolution or patch size; interpolation is not supported)")


def map_state_dict(sd: dict[str, torch.Tensor], target: nn.Module, fmt: str = "mae") -> dict[str, torch.Tensor]:
    """Map ``sd`` (format ``fmt``: "mae" | "timm") to ``target``'s key layout by the explicit rules."""
    if fmt not in RULES:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {sorted(RULES)}")
    rules = [(re.compile(rx), act) for rx, act in RULES[fmt]]
    own = target.state_dict()
    is_classifier = "head.weight" in own
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in sd.items():
        act = next((a for rx, a in rules if rx.search(k)), None)
        if act is None:
            unknown.append(k)
        elif act == "keep":
            out[k] = v
        elif act == "pos":
            out[k] = _adapt_pos(v, own["pos_embed"].shape, k) if "pos_embed" in own else v
        elif act == "cls":
            if "cls_token" in own:
                out[k] = v
        elif act == "norm":
            if "norm.weight" in own or not is_classifier:
                out[k] = v
        elif act == "head":
            if is_classifier:
                out[k] = v
    if unknown:
        raise KeyError(f"{len(unknown)} {fmt} checkpoint keys match no mapping rule: {sorted(unknown)}")
    return out


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error listing unexpected / missing keys and bad shapes."""
    own = model.state_dict()
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(set(own) - set(sd))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if unexpected or missing or shapes:
        hint = ""
        if "norm.weight" in missing and "fc_norm.weight" not in own:
            hint = (" (a finetuned MAE checkpoint has fc_norm instead of the encoder's final norm; "
                    "load it into the finetune classifier instead)")
        raise KeyError(f"{source} does not match {type(model).__name__}: unexpected keys {unexpected}, "
                       f"missing keys {missing}, shape mismatches {shapes}{hint}")
    model.load_state_dict(sd, strict=True)


def load_external(model: nn.Module, path_or_sd: str | Path | dict[str, torch.Tensor],
                  fmt: str = "mae") -> dict[str, Any]:
    """Load a public MAE / timm checkpoint into ``model`` (shared encoder or timm classifier), strictly.

    Returns ``{"source", "format", "loaded", "dropped"}`` (key names) for the run record.
    """
    source = str(path_or_sd) if not isinstance(path_or_sd, dict) else "state dict"
    sd = read_checkpoint(path_or_sd) if not isinstance(path_or_sd, dict) else path_or_sd
    mapped = map_state_dict(sd, model, fmt)
    load_strict(model, mapped, source)
    return {"source": source, "format": fmt, "loaded": sorted(mapped), "dropped": sorted(set(sd) - set(mapped))}


# The pooling of each format's own frozen-feature protocol, used by the linear probe, kNN and few-shot unless
# ``model.pool`` is set. facebookresearch/mae's main_linprobe.py builds models_vit with global_pool=False: the
# cls token after the final norm; its main_finetune.py uses global_pool=True (the mean of the patch tokens, then
# fc_norm), which canbench's finetune classifier always does. timm weights keep the average pool.
PROTOCOL_POOL = {"mae": "cls", "timm": "avg"}


def protocol_pool(fmt: str | None, class_token: bool) -> str:
    """``model.pool`` default of a public checkpoint: :data:`PROTOCOL_POOL` of its format ("avg" without a cls
    token)."""
    return PROTOCOL_POOL.get(str(fmt), "avg") if class_token else "avg"


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
    pool = model.get("pool") or "avg"
    if pool == "cls" and not class_token:
        raise ConfigError("model.pool=cls needs a cls token: the checkpoint has none"
                          + ("" if not has_cls else " left (model.class_token=false)") + "; use model.pool=avg")
    return ModelConfig(arch=name, img_size=int(img_size), patch_size=int(patch_size), class_token=class_token,
                       pool=pool)
