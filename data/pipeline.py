"""The pretraining input pipeline of a config: one builder for the trainer and the throughput benchmark.

:class:`PretrainData` holds the training set and the view augmentation that ``cfg.data`` describes and
turns them into model inputs ``{"views": (V, N, 3, S, S), "seed": (N,)}`` on the device, one batch per
optimizer step from ``start_step`` (what step ``s`` sees is a pure function of ``(seed, s)``, see
:mod:`.loader`). Three paths, chosen by ``data.pipeline`` and ``data.gpu_augment``:

- CPU workers decode and crop; the photometric ops run batched on the device (:func:`.loader.to_model_input`);
- ImageFolder JPEGs with ``data.gpu_augment``: workers read the bytes and draw the parameters; decoding,
  cropping and the photometric ops run on the device (:mod:`.gpu_pipeline`), a step ahead on CUDA;
- ImageFolder JPEGs with ``data.pipeline=dali``: the same workers feed the bytes and parameters to an NVIDIA
  DALI pipeline that decodes and augments on the device (:mod:`.dali_pipeline`, optional extra).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from canbench.config import Config, crop_scale

from .augment import ViewAugConfig
from .dali_pipeline import DaliAugment, build_dali_pretrain_loader, dali_model_inputs, import_dali
from .datasets import BadImages, bad_image_limit, build_dataset
from .gpu_pipeline import build_jpeg_pretrain_loader, imagefolder_files, prefetch_to_device
from .loader import IMAGENET_MEAN, IMAGENET_STD, build_pretrain_loader, to_model_input

JPEG_SETS = ("imagefolder", "imagenet", "jft")  # data sets the device JPEG path reads (ImageFolder trees of JPEGs)


def view_aug(cfg: Config) -> ViewAugConfig:
    """The view augmentation of ``cfg.data`` at the model's image size (crop: :func:`canbench.config.crop_scale`)."""
    d = cfg.data
    return ViewAugConfig(img_size=cfg.model.img_size, kind=d.augment, crop_scale=crop_scale(d),
                         jitter_strength=d.color_jitter_strength, blur_kernel_frac=d.blur_kernel_frac)


class PretrainData:
    """The training set and view augmentation of ``cfg``; :meth:`inputs` yields the model inputs per step."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.data
        self.cfg = cfg
        self.aug = view_aug(cfg)
        self.files: list[str] | None = None
        self.labels: list[int] | None = None
        self.dali = d.pipeline == "dali"
        if self.dali:
            import_dali()  # a missing install fails here, before any work
        if self.dali or (d.gpu_augment and d.dataset in JPEG_SETS):
            self.files, self.labels = imagefolder_files(d.root, d.split)
            self.dataset: Any = self.files
        else:
            kw = {"size": d.builtin_size, "seed": cfg.train.seed} if d.dataset == "builtin" else {}
            self.dataset = build_dataset(d.dataset, root=d.root, split=d.split, img_size=cfg.model.img_size, **kw)
        # unreadable files met so far (each replaced by another sample), and how many the run tolerates
        self.bad_images = BadImages(bad_image_limit(d.max_bad_images, len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset)

    def _count_bad(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass the batches through, adding each one's replaced files to :attr:`bad_images` (which raises past
        ``data.max_bad_images``)."""
        for batch in batches:
            if batch.get("bad"):
                self.bad_images.add(batch["bad"])
            yield batch

    def loader(self, num_views: int, start_step: int, total_steps: int, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False, worker_init_fn: Any = None) -> DataLoader:
        """One batch (this rank's slice of the global batch) per optimizer step from ``start_step``."""
        d, cfg = self.cfg.data, self.cfg
        kw = dict(num_views=num_views, seed=cfg.train.seed, global_batch=cfg.optim.batch_size, start_step=start_step,
                  total_steps=total_steps, rank=rank, world_size=world_size, num_workers=d.num_workers,
                  pin_memory=pin_memory, persistent_workers=d.persistent_workers, prefetch_factor=d.prefetch_factor)
        if self.dali:
            loader = build_dali_pretrain_loader(self.files, self.aug, labels=self.labels, **kw)
        elif self.files is not None:
            loader = build_jpeg_pretrain_loader(self.files, self.aug, labels=self.labels, **kw)
        else:
            loader = build_pretrain_loader(self.dataset, self.aug, **kw)
        if d.num_workers > 0 and worker_init_fn is not None:
            loader.worker_init_fn = worker_init_fn
        return loader

    def model_inputs(self, batches: Iterator[dict[str, Any]], device: torch.device,
                     resize: str = "interpolate") -> Iterator[dict[str, torch.Tensor]]:
        """Loader batches -> ``{"views": (V, N, 3, S, S), "seed": (N,)}`` on ``device`` (normalised views).
        ``resize`` applies to the own device path only (DALI resizes with its antialiased filter)."""
        batches = self._count_bad(batches)
        if self.dali:
            it = iter(batches)
            first = next(it, None)
            if first is None:
                return
            num_views, batch = first["boxes"].shape[1], first["boxes"].shape[0]
            aug = DaliAugment(self.aug, num_views, batch, device,
                              num_threads=max(2, min(8, self.cfg.data.num_workers)))
            yield from dali_model_inputs(itertools.chain([first], it), aug)
            return
        if self.files is not None:
            yield from prefetch_to_device(batches, self.aug, device, resize)
            return
        for batch in batches:
            yield {"views": to_model_input(batch, self.aug, device, IMAGENET_MEAN, IMAGENET_STD),
                   "seed": batch["seed"].to(device, non_blocking=True)}


__all__ = ["JPEG_SETS", "PretrainData", "view_aug"]
