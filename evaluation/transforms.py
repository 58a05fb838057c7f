"""Evaluation transforms and a dataset wrapper that applies them.

Datasets handed to the evaluation suites return ``(image, label)`` where the image is a PIL image
or a uint8 tensor (3, H, W). The transforms here accept both and return a normalised float tensor
(3, S, S).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import to_pil_image

DEFAULT_CROP_PCT = 224 / 256  # Resize(256) + CenterCrop(224) at S = 224 (MAE; docs/protocols.md §3)


def resize_size(img_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Shorter-side resize before the centre crop: floor(S / crop_pct) (256 for S = 224)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct={crop_pct!r} must be in (0, 1]")
    return int(math.floor(img_size / crop_pct + 1e-6))


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    """uint8 image -> float in [0, 1] -> (x - mean) / std."""
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]


def eval_transform(img_size: int, crop_pct: float = DEFAULT_CROP_PCT,
                   mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                   std: Sequence[float] = IMAGENET_DEFAULT_STD) -> Callable[[Any], torch.Tensor]:
    """Resize(S / crop_pct, bicubic) + CenterCrop(S) + normalise; PIL or uint8 (3, H, W) -> (3, S, S)."""
    return T.Compose([
        T.ToImage(),
        T.Resize(resize_size(img_size, crop_pct), interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(img_size),
        *_normalise(mean, std),
    ])


def linear_train_transform(img_size: int, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                           std: Sequence[float] = IMAGENET_DEFAULT_STD) -> Callable[[Any], torch.Tensor]:
    """MAE linear-probe training aug: RandomResizedCrop(S, bicubic) + horizontal flip + normalise."""
    return T.Compose([
        T.ToImage(),
        T.RandomResizedCrop(img_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(),
        *_normalise(mean, std),
    ])


def to_pil(img: Any) -> Image.Image:
    """PIL image or uint8 tensor (3, H, W) -> RGB PIL image (timm's PIL-only transforms need it)."""
    if isinstance(img, Image.Image):
        return img.convert("RGB") if img.mode != "RGB" else img
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.ndim != 3:
            raise TypeError(f"expected a uint8 image tensor (3, H, W), got {img.dtype} {tuple(img.shape)}")
        return to_pil_image(img)
    raise TypeError(f"expected a PIL image or a uint8 tensor, got {type(img).__name__}")


def border_crop(img: Any, px: int) -> Any:
    """Remove ``px`` pixels on every side (ObjectNet's red border); PIL or tensor (..., H, W)."""
    if px <= 0:
        return img
    if isinstance(img, Image.Image):
        w, h = img.size
        if w <= 2 * px or h <= 2 * px:
            raise ValueError(f"image of size {w}x{h} is too small for a {px}px border crop")
        return img.crop((px, px, w - px, h - px))
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2:]
        if w <= 2 * px or h <= 2 * px:
            raise ValueError(f"image of size {w}x{h} is too small for a {px}px border crop")
        return img[..., px:h - px, px:w - px]
    raise TypeError(f"expected a PIL image or a tensor, got {type(img).__name__}")


class TransformedDataset(Dataset):
    """``(image, label)`` dataset with ``transform`` applied to the image (labels untouched)."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        img, label = self.dataset[index]
        return self.transform(img), label
