"""Eval transforms: sizes, PIL / uint8-tensor parity, border crop."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from canbench.evaluation.transforms import (
    TransformedDataset,
    border_crop,
    eval_transform,
    linear_train_transform,
    resize_size,
    to_pil,
)


def test_resize_size_follows_crop_pct():
    assert resize_size(224) == 256  # Resize(256) + CenterCrop(224)
    assert resize_size(384) == 438
    assert resize_size(32, 1.0) == 32
    with pytest.raises(ValueError, match="crop_pct=0"):
        resize_size(32, 0)


def test_eval_transform_pil_and_tensor_agree():
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 40, 50, generator=g) * 255).to(torch.uint8)
    tf = eval_transform(32, 224 / 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    a, b = tf(img), tf(to_pil(img))
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert float((a - b).abs().mean()) < 0.05  # tensor and PIL bicubic resizers differ slightly
    assert linear_train_transform(16)(img).shape == (3, 16, 16)


def test_border_crop_pil_and_tensor():
    pil = Image.new("RGB", (10, 8))
    assert border_crop(pil, 2).size == (6, 4)
    assert border_crop(torch.zeros(3, 8, 10), 2).shape == (3, 4, 6)
    with pytest.raises(ValueError, match="too small"):
        border_crop(Image.new("RGB", (4, 4)), 2)


def test_transformed_dataset_and_to_pil_errors():
    ds = TransformedDataset([(torch.zeros(3, 4, 4, dtype=torch.uint8), 3)], lambda x: x.float() + 1)
    x, y = ds[0]
    assert y == 3 and float(x.mean()) == 1.0 and len(ds) == 1
    with pytest.raises(TypeError, match="uint8 image tensor"):
        to_pil(torch.zeros(3, 4, 4))
