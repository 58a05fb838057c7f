"""DALI input path (``data.pipeline: dali``): the device JPEG path's recipe as an NVIDIA DALI pipeline.

A third way to feed the step, beside the CPU workers (:mod:`.loader`) and the own device path
(:mod:`.gpu_pipeline`). What stays the same is what the harness guarantees:

* **worker** (:class:`DaliViewDataset`): the own device path's worker, :class:`.gpu_pipeline.JpegViewDataset`:
  it reads the file's bytes and draws every view's crop box and photometric row from the per-sample
  generator keyed ``(seed, epoch, index)``, with the reference's samplers in the reference's order. The
  only change: files the worker would decode itself (PNG, CMYK JPEG, ...) are shipped as their bytes
  too, since DALI's decoder reads those formats (with the size the worker decoded to draw the boxes).
* **DALI** (:class:`DaliAugment`): the drawn parameters enter the pipeline as external inputs
  (``fn.external_source``), one per parameter and view; DALI's own random number generators are not
  used. ``fn.decoders.image(device="mixed")`` decodes (nvJPEG, on the hardware JPEG engines where the
  GPU has them), then per view: crop + antialiased resize to ``S x S`` in uint8 (``fn.resize`` over the
  box, like :func:`.augment.crop_resize`), flip, colour jitter in the sampled order (brightness,
  contrast and saturation as the same clamped blends, hue as the same closed-form HSV rotation as
  :func:`.augment._adjust_hue`), grayscale, Gaussian blur (``fn.gaussian_blur``, same kernel and
  reflect-101 border), normalisation to ``(3, S, S)`` float. The per-sample choices (which op at which
  jitter position, gray, blur) are DALI conditionals, so only the chosen rows run an op.
  Same ops, same order, same formulas as :func:`.augment.apply_photometric`; the differences are
  the decoder's IDCT and the resize filter's rounding, bounded by the tests.
* **CPU backend**: ``device="cpu"`` runs the same graph on the CPU (``device_id=None``), which is how
  ``tests/test_dali_pipeline.py`` checks it against the CPU reference without a GPU.

DALI is an optional extra (``pip install 'canbench[dali]'``: ``nvidia-dali-cuda130``, or the
``nvidia-dali-cudaXXX`` build that matches torch's CUDA); it is imported only when this path is used, and a
missing install is a :class:`canbench.config.ConfigError` saying what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from canbench.config import ConfigError

from .augment import (
    OP_BRIGHTNESS,
    OP_CONTRAST,
    OP_HUE,
    OP_SATURATION,
    ViewAugConfig,
    blur_kernel_size,
    unpack_photometric,
)
from .gpu_pipeline import JpegViewDataset, build_jpeg_pretrain_loader, read_bytes
from .loader import IMAGENET_MEAN, IMAGENET_STD

DALI_INSTALL = ("pip install 'canbench[dali]' (nvidia-dali-cuda130; for another CUDA, the nvidia-dali-cudaXXX "
                "build that matches torch.version.cuda)")
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as .augment._gray
_HUE_OFFSETS = (5.0, 3.0, 1.0)  # as .augment._HUE_CHANNEL_OFFSET


def import_dali() -> Any:
    """``nvidia.dali``, or a :class:`ConfigError` naming the missing package and how to install it."""
    try:
        import nvidia.dali
        import nvidia.dali.fn  # noqa: F401 - the operators' namespace
        import nvidia.dali.math  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"data.pipeline=dali needs NVIDIA DALI, which is not installed ({e}): {DALI_INSTALL}") from e
    return nvidia.dali


class DaliViewDataset(JpegViewDataset):
    """:class:`.gpu_pipeline.JpegViewDataset` that always ships the file's bytes (DALI decodes every format).

    The boxes are drawn exactly as there (from the header size, or from the worker-decoded size for files
    the own device path decodes in the worker), so both paths see the same parameters."""

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        item = super().__getitem__(key)
        if not item["encoded"]:
            item["data"], item["encoded"] = read_bytes(self.files[item["source"]]), True  # a replacement's file
        return item


def build_dali_pretrain_loader(files: Sequence[str | os.PathLike], aug_cfg: ViewAugConfig, num_views: int,
                               seed: int, global_batch: int, **kw: Any) -> DataLoader:
    """:func:`.gpu_pipeline.build_jpeg_pretrain_loader` (same keyword arguments) with :class:`DaliViewDataset`
    workers: same batches, same order, same parameters; every file as bytes."""
    return build_jpeg_pretrain_loader(files, aug_cfg, num_views, seed, global_batch, dataset_cls=DaliViewDataset,
                                      **kw)


def view_inputs(photo: torch.Tensor, cfg: ViewAugConfig) -> dict[str, np.ndarray]:
    """Photometric rows (N, K) of one view -> the pipeline's per-sample external inputs (arrays of N).

    ``flip``, ``gray``, ``blur`` (bool), ``sigma``, ``hue`` (float32) and per jitter position ``p``:
    ``blend{p}`` (bool: brightness, contrast or saturation runs there), ``factor{p}``, ``contrast{p}`` /
    ``saturation{p}`` (float 0/1: which reference the blend uses; brightness blends with 0) and
    ``hue{p}`` (bool). Rows whose jitter is off run no op at any position.
    """
    p = unpack_photometric(photo.float().cpu())
    factors = torch.stack((p.brightness, p.contrast, p.saturation), dim=1)
    out = {"flip": p.flip, "gray": p.gray, "blur": p.blur_apply, "sigma": p.sigma, "hue": p.hue}
    jitter = cfg.jitter_p > 0 and cfg.jitter_strength > 0
    for pos in range(4):
        op = p.order[:, pos]
        on = p.jitter_apply if jitter else torch.zeros_like(p.jitter_apply)
        out[f"blend{pos}"] = on & (op != OP_HUE)
        out[f"factor{pos}"] = factors.gather(1, op.clamp(max=OP_SATURATION).view(-1, 1)).view(-1)
        out[f"contrast{pos}"] = (op == OP_CONTRAST).float()
        out[f"saturation{pos}"] = (op == OP_SATURATION).float()
        out[f"hue{pos}"] = on & (op == OP_HUE)
    assert OP_BRIGHTNESS == 0  # brightness: factor column 0, reference 0 (neither flag)
    return {k: v.numpy().astype(np.bool_ if v.dtype == torch.bool else np.float32) for k, v in out.items()}


def _gray(x: Any) -> Any:
    """(H, W, 3) float -> (H, W) luma."""
    return x[:, :, 0] * _GRAY[0] + x[:, :, 1] * _GRAY[1] + x[:, :, 2] * _GRAY[2]


def _adjust_hue(x: Any, hue: Any, fn: Any, dmath: Any) -> Any:
    """:func:`.augment._adjust_hue` in DALI arithmetic on (H, W, 3) float: Pillow's HSV, hue rotated."""
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    maxc = dmath.max(r, dmath.max(g, b))
    chroma = maxc - dmath.min(r, dmath.min(g, b))
    pos = chroma > 0.0
    safe = chroma * pos + (1.0 - pos * 1.0)  # chroma, or 1 where the pixel is gray
    is_r = (maxc == r) * 1.0
    is_g = (maxc == g) * (1.0 - is_r)
    h6 = is_r * ((g - b) / safe) + (1.0 - is_r) * (is_g * ((b - r) / safe + 2.0)
                                                   + (1.0 - is_g) * ((r - g) / safe + 4.0))
    h6 = h6 + hue * 6.0
    channels = []
    for off in _HUE_OFFSETS:
        k = h6 + off
        k = k - 6.0 * dmath.floor(k / 6.0)  # remainder mod 6, as torch.remainder
        w = dmath.clamp(dmath.min(k, 4.0 - k), 0.0, 1.0)
        channels.append(maxc - chroma * w)
    return fn.reshape(fn.stack(*channels, axis=2), layout="HWC")  # the layout both branches of a conditional share


def _build_pipeline(cfg: ViewAugConfig, num_views: int, max_batch: int, device: torch.device, num_threads: int,
                    mean: Sequence[float], std: Sequence[float]) -> tuple[Any, set[str]]:
    """The DALI pipeline (external inputs -> ``num_views`` outputs, each (N, 3, S, S) float, normalised) and
    the names of the external inputs it reads (an op the recipe turns off, e.g. blur for ``mae``, reads none)."""
    dali = import_dali()
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    gpu = device.type == "cuda"
    s = cfg.img_size
    interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}[cfg.interpolation]
    jitter, k = cfg.jitter_p > 0 and cfg.jitter_strength > 0, blur_kernel_size(s, cfg.blur_kernel_frac)

    names: set[str] = set()

    def ext(name: str, dtype: Any) -> Any:
        names.add(name)
        return fn.external_source(name=name, dtype=dtype, device="cpu")

    def on_dev(node: Any) -> Any:  # per-sample scalars used in arithmetic with images
        return node.gpu() if gpu else node

    @dali.pipeline_def(batch_size=max_batch, num_threads=num_threads, device_id=device.index or 0 if gpu else None,
                       exec_dynamic=True, enable_conditionals=True, prefetch_queue_depth=1)
    def pipeline() -> tuple[Any, ...]:
        encoded = ext("encoded", types.UINT8)
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        outs = []
        for v in range(num_views):
            def param(name: str, dtype: Any = types.FLOAT, view: int = v) -> Any:
                return ext(f"v{view}_{name}", dtype)

            x = fn.resize(images, size=[s, s], roi_start=param("roi_start"), roi_end=param("roi_end"),
                          roi_relative=False, interp_type=interp, antialias=True)  # uint8, as crop_resize
            x = fn.reshape(fn.cast(x, dtype=types.FLOAT) / 255.0, layout="HWC")
            x = fn.flip(x, horizontal=fn.cast(param("flip", types.BOOL), dtype=types.INT32))
            if jitter:
                hue = on_dev(param("hue"))
                for pos in range(4):
                    blend_on, hue_on = param(f"blend{pos}", types.BOOL), param(f"hue{pos}", types.BOOL)
                    f, c_ref, s_ref = (on_dev(param(f"{n}{pos}")) for n in ("factor", "contrast", "saturation"))
                    if blend_on:
                        gray = _gray(x)
                        ref = fn.expand_dims(gray * s_ref + fn.reductions.mean(gray) * c_ref, axes=[2])
                        x = fn.reshape(dmath.clamp(x * f + ref * (1.0 - f), 0.0, 1.0), layout="HWC")
                    if hue_on:
                        x = _adjust_hue(x, hue, fn, dmath)
            if cfg.gray_p > 0:
                if param("gray", types.BOOL):
                    g = fn.expand_dims(_gray(x), axes=[2])
                    x = fn.reshape(fn.cat(g, g, g, axis=2), layout="HWC")
            if cfg.blur_p > 0:
                sigma = param("sigma")
                if param("blur", types.BOOL):
                    x = fn.gaussian_blur(x, sigma=sigma, window_size=k, dtype=types.FLOAT)
            outs.append(fn.crop_mirror_normalize(x, mean=list(mean), std=list(std), output_layout="CHW",
                                                 dtype=types.FLOAT))
        return tuple(outs)

    pipe = pipeline()
    pipe.build()
    return pipe, names


class DaliAugment:
    """:func:`.gpu_pipeline.jpeg_to_model_input` on DALI: a :func:`.gpu_pipeline.collate_jpeg` batch of
    :class:`DaliViewDataset` items -> normalised views (V, N, 3, S, S) float on ``device``.

    ``feed`` hands a batch's bytes and parameters to the pipeline and starts it; ``fetch`` returns the
    oldest fed batch's views (copied out of DALI's buffers). ``__call__`` is ``feed`` then ``fetch``.
    """

    def __init__(self, cfg: ViewAugConfig, num_views: int, max_batch: int, device: torch.device | str,
                 num_threads: int = 2, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
                 ) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"data.pipeline=dali runs on cpu or cuda, not {self.device}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cfg, self.num_views, self.max_batch = cfg, num_views, max_batch
        self.pipe, self.inputs = _build_pipeline(cfg, num_views, max_batch, self.device, num_threads, mean, std)
        self.pending = 0

    def feed(self, batch: dict[str, Any]) -> None:
        if not bool(batch["encoded"].all()):
            raise ValueError("DaliAugment takes batches of DaliViewDataset items (every file as bytes)")
        lengths = batch["jpeg_lengths"].tolist()
        if len(lengths) > self.max_batch:
            raise ValueError(f"batch of {len(lengths)} images exceeds the pipeline's max_batch={self.max_batch}")
        flat = batch["jpeg_bytes"].numpy()
        offsets = np.cumsum([0, *lengths])
        self.pipe.feed_input("encoded", [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
        boxes = batch["boxes"].numpy().astype(np.float32)  # (N, V, 4) top, left, h, w
        for v in range(self.num_views):
            tl = boxes[:, v, :2]
            inputs = {"roi_start": tl, "roi_end": tl + boxes[:, v, 2:], **view_inputs(batch["photo"][:, v], self.cfg)}
            for name, values in inputs.items():
                if f"v{v}_{name}" in self.inputs:
                    self.pipe.feed_input(f"v{v}_{name}", list(values))
        self.pipe.schedule_run()
        self.pending += 1

    def fetch(self) -> torch.Tensor:
        if not self.pending:
            raise RuntimeError("DaliAugment.fetch: nothing was fed")
        if self.device.type == "cuda":  # outputs ready in the order of torch's current stream (no host wait)
            outs = self.pipe.outputs(cuda_stream=torch.cuda.current_stream(self.device))
        else:
            outs = self.pipe.outputs()
        self.pending -= 1
        views = [_to_torch(o, self.device) for o in outs]
        self.pipe.release_outputs()
        return torch.stack(views)

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        self.feed(batch)
        return self.fetch()


def _to_torch(tensors: Any, device: torch.device) -> torch.Tensor:
    """A DALI TensorList of equal-shape samples -> a torch tensor on ``device`` (a copy)."""
    dense = tensors.as_tensor()
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(dense))


def dali_model_inputs(batches: Iterator[dict[str, Any]], aug: DaliAugment) -> Iterator[dict[str, torch.Tensor]]:
    """``{"views", "seed"}`` per loader batch; the next batch is fed to DALI before this one is handed out,
    so DALI prepares step k+1 while the consumer runs step k."""
    it = iter(batches)
    queue: list[torch.Tensor] = []
    batch = next(it, None)
    if batch is not None:
        aug.feed(batch)
        queue.append(batch["seed"])
    while queue:
        batch = next(it, None)
        if batch is not None:
            aug.feed(batch)
            queue.append(batch["seed"])
        views = aug.fetch()
        yield {"views": views, "seed": queue.pop(0).to(aug.device, non_blocking=True)}


__all__ = ["DALI_INSTALL", "DaliAugment", "DaliViewDataset", "build_dali_pretrain_loader", "dali_model_inputs",
           "import_dali", "view_inputs"]
