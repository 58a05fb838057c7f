"""The finetuning classifier: a timm VisionTransformer built to match a shared encoder, and its checkpoint.

Head (paper Table 10 / MAE ``models_vit`` with global_pool): mean-pool of the patch tokens ->
LayerNorm (``fc_norm``) -> Linear (trunc_normal std 2e-5, bias 0). As in MAE finetuning, the
encoder's final ``norm`` is **dropped** (timm sets ``norm = Identity`` when ``fc_norm=True``) and
``fc_norm`` starts fresh (weight 1, bias 0); every other encoder tensor is loaded, and the positional
embedding becomes a trained parameter (timm ``pos_embed='learn'``), as in MAE's finetune model.

Checkpoint (``torch.load(..., weights_only=True)`` compatible): ``{"format", "model" (state dict),
"model_name", "model_kwargs", "norm_eps", "num_classes", ...metadata}``, written atomically.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from canbench.config import ConfigError
from canbench.io import torch_load, torch_save_atomic

CHECKPOINT_FORMAT = "canbench.finetuned/1"
HEAD_INIT_STD = 2e-5  # MAE main_finetune: trunc_normal_(model.head.weight, std=2e-5)
TIMM_DEFAULT_EPS = 1e-6
# (embed_dim, depth, heads) -> the matching timm model name; other shapes use the base entry + kwargs
_TIMM_NAMES = {(192, 12, 3): "vit_tiny_patch16_224", (384, 12, 6): "vit_small_patch16_224",
               (768, 12, 12): "vit_base_patch16_224", (1024, 24, 16): "vit_large_patch16_224",
               (1280, 32, 16): "vit_huge_patch14_224"}
FRESH_KEYS = frozenset({"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"})
# the timm keyword arguments classifier_spec writes: the only ones a finetuned checkpoint may name
SPEC_KWARGS = frozenset({"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                         "class_token", "global_pool", "fc_norm", "num_classes", "drop_path_rate"})


def _square(v: Any, what: str) -> int:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if t[0] != t[1]:
        raise ValueError(f"non-square {what} {t} is not supported")
    return int(t[0])


def classifier_spec(encoder: nn.Module, num_classes: int, drop_path_rate: float = 0.1) -> dict[str, Any]:
    """``{"model_name", "model_kwargs", "norm_eps"}`` describing a timm ViT classifier matching ``encoder``."""
    blk = encoder.blocks[0]
    dim = int(encoder.embed_dim)
    depth = len(encoder.blocks)
    heads = int(blk.attn.num_heads)
    kwargs = dict(
        img_size=_square(encoder.patch_embed.img_size, "img_size"),
        patch_size=_square(encoder.patch_embed.patch_size, "patch_size"),
        embed_dim=dim, depth=depth, num_heads=heads,
        mlp_ratio=blk.mlp.fc1.out_features / dim, qkv_bias=blk.attn.qkv.bias is not None,
        class_token=int(encoder.num_prefix_tokens) > 0, global_pool="avg", fc_norm=True,
        num_classes=int(num_classes), drop_path_rate=float(drop_path_rate),
    )
    name = _TIMM_NAMES.get((dim, depth, heads), "vit_base_patch16_224")
    return {"model_name": name, "model_kwargs": kwargs, "norm_eps": float(blk.norm1.eps)}


def build_classifier(spec: dict[str, Any]) -> nn.Module:
    """``timm.create_model(spec["model_name"], pretrained=False, **spec["model_kwargs"])`` (+ norm eps)."""
    kwargs = dict(spec["model_kwargs"])
    eps = float(spec.get("norm_eps", TIMM_DEFAULT_EPS))
    if eps != TIMM_DEFAULT_EPS:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=eps)
    return timm.create_model(spec["model_name"], pretrained=False, **kwargs)


def init_head(model: nn.Module, std: float = HEAD_INIT_STD) -> None:
    """MAE's head init: weight trunc_normal(std), bias 0; fc_norm weight 1, bias 0."""
    nn.init.trunc_normal_(model.head.weight, std=std)
    nn.init.zeros_(model.head.bias)
    nn.init.ones_(model.fc_norm.weight)
    nn.init.zeros_(model.fc_norm.bias)


def load_encoder_weights(model: nn.Module, encoder_state: dict[str, torch.Tensor]) -> None:
    """Load every encoder tensor except the final ``norm.*`` (MAE); only fc_norm / head stay fresh.

    Raises KeyError naming the encoder keys the classifier lacks and the classifier keys the
    encoder lacks (beyond fc_norm / head), and RuntimeError on shape mismatches.
    """
    sd = {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}
    own = set(model.state_dict())
    unexpected = sorted(set(sd) - own)
    missing = sorted(own - set(sd) - FRESH_KEYS)
    if unexpected or missing:
        raise KeyError(f"encoder state does not match the classifier: unexpected keys {unexpected}, "
                       f"missing keys {missing}")
    result = model.load_state_dict(sd, strict=False)
    left = sorted(set(result.missing_keys) - FRESH_KEYS)
    if left or result.unexpected_keys:
        raise KeyError(f"classifier load left missing {left}, unexpected {sorted(result.unexpected_keys)}")


def classifier_from_encoder(encoder: nn.Module, num_classes: int, drop_path_rate: float = 0.1,
                            ) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh-head timm classifier carrying ``encoder``'s weights, and its spec."""
    spec = classifier_spec(encoder, num_classes, drop_path_rate)
    model = build_classifier(spec)
    load_encoder_weights(model, {k: v.detach().cpu() for k, v in encoder.state_dict().items()})
    init_head(model)
    return model, spec


def save_finetuned(path: str | Path, model: nn.Module, spec: dict[str, Any], **meta: Any) -> Path:
    """Atomically write a finetuned checkpoint (state dict + timm model args + plain metadata)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"format": CHECKPOINT_FORMAT, "model": state, "model_name": spec["model_name"],
           "model_kwargs": dict(spec["model_kwargs"]), "norm_eps": spec.get("norm_eps", TIMM_DEFAULT_EPS),
           "num_classes": int(spec["model_kwargs"]["num_classes"]), **meta}
    torch_save_atomic(obj, path)
    return Path(path)


def load_finetuned(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, checkpoint metadata without the state dict); strict load."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"finetuned checkpoint {p} does not exist")
    ckpt = torch_load(p, map_location)
    for key in ("format", "model", "model_name", "model_kwargs"):
        if key not in ckpt:
            raise KeyError(f"{p} is not a canbench finetuned checkpoint: it lacks {key!r} "
                           f"(keys: {sorted(ckpt)[:20]})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: checkpoint format {ckpt['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    # the file names what timm builds: only what classifier_spec writes is accepted (timm.create_model also takes
    # checkpoint_path, pretrained_cfg_overlay, hf-hub: and local-dir: names, which would read other files or fetch)
    kwargs = ckpt["model_kwargs"]
    if ckpt["model_name"] not in _TIMM_NAMES.values() or not isinstance(kwargs, dict) or set(kwargs) - SPEC_KWARGS:
        extra = sorted(set(kwargs) - SPEC_KWARGS) if isinstance(kwargs, dict) else kwargs
        raise ConfigError(f"{p}: model_name={ckpt['model_name']!r} / model_kwargs {extra!r} are not what canbench "
                          f"writes (names: {sorted(_TIMM_NAMES.values())}; kwargs: {sorted(SPEC_KWARGS)})")
    spec = {"model_name": ckpt["model_name"], "model_kwargs": dict(kwargs),
            "norm_eps": ckpt.get("norm_eps", TIMM_DEFAULT_EPS)}
    spec["model_kwargs"]["drop_path_rate"] = 0.0  # evaluation only
    model = build_classifier(spec)
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return model, meta
