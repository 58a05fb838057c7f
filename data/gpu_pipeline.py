"""JPEG fast path: workers ship JPEG bytes and view parameters; decode and augmentation run on the device.

A plain PIL SimCLR pipeline delivers ~14 two-view img/s per CPU worker (BENCHMARKS.md reference), ~10x less than
an H100 consumes; the reference loader (:mod:`.loader`) already runs the photometric ops on the
device but still decodes, crops and resizes every image in a CPU worker. Here:

* **worker** (:class:`JpegViewDataset`, one item per ``(epoch, index)`` of :class:`.loader.StepBatchSampler`):
  reads the file's bytes, takes height/width from the JPEG header (:func:`jpeg_info`, no decoding),
  and draws the views' crop boxes and photometric rows from the *same* per-sample generator, with the
  *same* samplers in the *same* order as :class:`.augment.TwoViewTransform` (:func:`sample_view_params`).
  Files nvJPEG cannot take (not a JPEG, CMYK/YCCK, 12-bit, arithmetic-coded, Adobe RGB) are decoded
  in the worker instead and shipped as pixels.
* **main process** (:func:`jpeg_to_model_input`, same signature as :func:`.loader.to_model_input`):
  one batched ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA), crop + antialiased
  resize of every view on the device (:func:`crop_resize_batch`), then the reference
  :func:`.loader.to_model_input` (uint8 crops -> :func:`.augment.apply_photometric` -> normalise).

With ``device='cpu'`` the same code decodes on the CPU, so it is tested here against the reference
path: same boxes, same photometric rows, same pixels up to interpolation rounding.
:func:`build_jpeg_pretrain_loader` mirrors :func:`.loader.build_pretrain_loader`'s signature.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from canbench.config import ConfigError
from canbench.rng import STREAM_AUGMENT, sample_seed, torch_generator

from .augment import ViewAugConfig, sample_crop, sample_photometric
from .loader import IMAGENET_MEAN, IMAGENET_STD, StepBatchSampler, collate_ids, to_model_input

log = logging.getLogger(__name__)

RESIZE_MODES = ("interpolate", "roi_align")

# Start-of-frame markers (they carry the image size). Baseline / extended / progressive Huffman
# (C0, C1, C2) are what nvJPEG decodes; lossless (C3) and arithmetic-coded (C9-CB) frames, and the
# hierarchical ones, go to the CPU decoder.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_GPU_SOF = frozenset({0xC0, 0xC1, 0xC2})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field


class NotAJpegError(ValueError):
    """The bytes are not a JPEG whose size can be read from the header; the message says why."""


@dataclass(frozen=True)
class JpegInfo:
    """What the JPEG header says: size, components, frame type, precision, Adobe colour transform."""

    height: int
    width: int
    components: int
    sof: int  # start-of-frame marker, 0xC0 baseline ... 0xC2 progressive ...
    precision: int  # bits per sample
    adobe_transform: int | None = None  # APP14 "Adobe" transform flag: 0 = RGB/CMYK, 1 = YCbCr, 2 = YCCK

    @property
    def gpu_decodable(self) -> bool:
        """True when nvJPEG (``decode_jpeg(device='cuda')``) decodes it to the same RGB as libjpeg."""
        return (self.sof in _GPU_SOF and self.precision == 8 and self.components in (1, 3)
                and self.height > 0 and not (self.components == 3 and self.adobe_transform == 0))


def jpeg_info(data: bytes | bytearray | memoryview | torch.Tensor) -> JpegInfo:
    """Parse a JPEG's markers up to its start-of-frame: size and format, without decoding.

    Raises :class:`NotAJpegError` naming the problem (no SOI marker, truncated, scan before frame).
    """
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8 or data.ndim != 1:
            raise NotAJpegError(f"expected a 1-D uint8 tensor of file bytes, got {data.dtype} {tuple(data.shape)}")
        data = data.numpy().tobytes()
    buf = bytes(data)
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise NotAJpegError(f"no JPEG start-of-image marker (first bytes {buf[:4].hex()})")
    i, n = 2, len(buf)
    adobe: int | None = None
    while i < n:
        if buf[i] != 0xFF:
            raise NotAJpegError(f"expected a marker at byte {i}, found 0x{buf[i]:02x}")
        while i < n and buf[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = buf[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise NotAJpegError(f"reached {'end of image' if marker == 0xD9 else 'scan data'} before a frame header")
        if i + 2 > n:
            break
        length = (buf[i] << 8) | buf[i + 1]
        seg = buf[i + 2:i + length]
        if length < 2 or len(seg) < length - 2:
            break
        if marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        if marker in _SOF_MARKERS:
            if len(seg) < 6:
                break
            return JpegInfo(height=(seg[1] << 8) | seg[2], width=(seg[3] << 8) | seg[4], components=seg[5],
                            sof=marker, precision=seg[0], adobe_transform=adobe)
        i += length
    raise NotAJpegError(f"truncated JPEG: no frame header in {n} bytes")


def sample_view_params(generator: torch.Generator, height: int, width: int, cfg: ViewAugConfig,
                       num_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes ``(V, 4)`` int64 ``(top, left, h, w)`` and photometric rows ``(V, K)`` for one image.

    Same samplers, same draw order as :class:`.augment.TwoViewTransform` (every view's crop first,
    then one photometric row per view), so the same generator state gives the same views.
    """
    boxes = [sample_crop(generator, height, width, cfg.crop_scale, cfg.crop_ratio) for _ in range(num_views)]
    photo = sample_photometric(generator, num_views, cfg)
    return torch.tensor(boxes, dtype=torch.int64), photo


def read_bytes(path: str | os.PathLike) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor."""
    from torchvision.io import read_file

    return read_file(os.fspath(path))


class JpegViewDataset(Dataset):
    """Worker side: ``ds[(epoch, index)]`` -> the file's JPEG bytes (or pixels) and its views' parameters.

    ``files`` are image paths in data set order (e.g. ``ImageFolder.samples``). The generator of a
    sample is the one :class:`.loader.PretrainDataset` uses, keyed ``(seed, epoch, index, STREAM_AUGMENT)``.
    """

    def __init__(self, files: Sequence[str | os.PathLike], labels: Sequence[int] | None, aug_cfg: ViewAugConfig,
                 num_views: int, seed: int) -> None:
        if num_views < 1:
            raise ConfigError(f"JpegViewDataset num_views={num_views} must be >= 1")
        if labels is not None and len(labels) != len(files):
            raise ConfigError(f"JpegViewDataset: {len(labels)} labels for {len(files)} files")
        self.files = [os.fspath(f) for f in files]
        self.labels = list(labels) if labels is not None else [0] * len(self.files)
        self.aug_cfg, self.num_views, self.seed = aug_cfg, num_views, seed

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> tuple[torch.Tensor, bool, int, int, int, int]:
        """(JPEG bytes or decoded pixels, encoded?, height, width, label, index) of sample ``index``; BadImageError
        when the file cannot be read or decoded. A JPEG without its end-of-image marker (truncated) is decoded here."""
        from .datasets import decode_rgb, unreadable_image

        path = self.files[index]
        try:
            data = read_bytes(path)
        except (RuntimeError, OSError) as e:
            raise unreadable_image(path, e) from None
        try:
            info = jpeg_info(data)
            encoded = info.gpu_decodable and _has_end_marker(data)
        except NotAJpegError:
            info, encoded = None, False
        if encoded:
            h, w = info.height, info.width
        else:  # decode here like the reference (torchvision.io, RGB); ship pixels
            data = decode_rgb(path)
            h, w = data.shape[1:]
        return data, encoded, h, w, int(self.labels[index]), index

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        from .datasets import read_or_replace

        epoch, index = int(key[0]), int(key[1])
        (data, encoded, h, w, label, source), bad = read_or_replace(self._read, len(self.files), self.seed, epoch,
                                                                    index)
        g = torch_generator(self.seed, epoch, index, STREAM_AUGMENT)
        boxes, photo = sample_view_params(g, h, w, self.aug_cfg, self.num_views)
        return {"data": data, "encoded": encoded, "boxes": boxes, "photo": photo,
                "seed": sample_seed(self.seed, epoch, index), "label": label,
                "index": index, "epoch": epoch, "bad": bad, "source": source}  # source: the file read (replaced?)


def _has_end_marker(data: torch.Tensor, tail: int = 1024) -> bool:
    """Whether the JPEG's last ``tail`` bytes hold the end-of-image marker (a truncated file has none)."""
    return b"\xff\xd9" in data[-tail:].numpy().tobytes()


def collate_jpeg(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """List of :class:`JpegViewDataset` items -> one batch.

    ``jpeg_bytes``: the JPEG files back to back, uint8 (total,), with ``jpeg_lengths`` (J,) int64 (one
    shared-memory tensor per batch instead of one per image); ``pixels``: list of uint8 (3, H, W) for
    the files decoded in the worker; ``encoded`` (N,) bool says which is which, in batch order;
    ``boxes`` (N, V, 4), ``photo`` (N, V, K), ``seed``/``label``/``index``/``epoch`` (N,) int64.
    """
    jpegs = [it["data"] for it in items if it["encoded"]]
    return {
        "jpeg_bytes": torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8),
        "jpeg_lengths": torch.tensor([j.numel() for j in jpegs], dtype=torch.int64),
        "pixels": [it["data"] for it in items if not it["encoded"]],
        "encoded": torch.tensor([bool(it["encoded"]) for it in items], dtype=torch.bool),
        "boxes": torch.stack([it["boxes"] for it in items]),
        "photo": torch.stack([it["photo"] for it in items]),
        **collate_ids(items),
    }


def decode_batch(batch: dict[str, Any], device: torch.device | str) -> list[torch.Tensor]:
    """A :func:`collate_jpeg` batch -> uint8 RGB (3, H, W) images on ``device``, in batch order.

    The JPEGs are decoded in one batched call on ``device`` (nvJPEG on CUDA runs on its own stream; the
    host waits only for that stream, the current stream waits on the GPU); worker-decoded pixels are
    copied.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    lengths = batch["jpeg_lengths"].tolist()
    jpegs = list(torch.split(batch["jpeg_bytes"], lengths)) if lengths else []
    decoded = iter(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else [])
    pixels = iter(batch["pixels"])
    return [next(decoded) if e else next(pixels).to(device, non_blocking=True) for e in batch["encoded"].tolist()]


def crop_resize_batch(images: Sequence[torch.Tensor], boxes: torch.Tensor, size: int,
                      interpolation: str = "bilinear", resize: str = "interpolate") -> torch.Tensor:
    """Crop ``boxes`` (N, V, 4) ``(top, left, h, w)`` of each image and resize to S x S -> uint8 (N, V, 3, S, S).

    ``resize='interpolate'``: per view, an antialiased ``F.interpolate`` of the crop in float, like
    :func:`.augment.crop_resize` (torchvision ``resized_crop``, antialias); results match it up to
    uint8 rounding. ``resize='roi_align'`` (bilinear only): one ``torchvision.ops.roi_align`` per image
    for all its views, sampling ceil(crop/S) points per output pixel and axis (area averaging instead of
    the antialias triangle filter): fewer kernel launches, slightly different pixels.
    Rounding to uint8 happens once, batched, so :func:`.loader.to_model_input` takes the result.
    """
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r} is not one of {RESIZE_MODES}")
    if interpolation not in ("bilinear", "bicubic"):
        raise ConfigError(f"interpolation={interpolation!r} is not one of ('bilinear', 'bicubic')")
    if resize == "roi_align" and interpolation != "bilinear":
        raise ConfigError(f"resize='roi_align' samples bilinearly; interpolation={interpolation!r} "
                          "(augment kind 'mae') needs resize='interpolate'")
    n, v = boxes.shape[:2]
    if len(images) != n:
        raise ValueError(f"{len(images)} images for {n} rows of boxes")
    box_list = boxes.tolist()  # boxes come from the workers: a CPU tensor, no device sync
    views: list[torch.Tensor] = []
    if resize == "interpolate":
        for img, img_boxes in zip(images, box_list):
            for top, left, h, w in img_boxes:
                crop = img[:, top:top + h, left:left + w].unsqueeze(0).float()
                views.append(F.interpolate(crop, size=(size, size), mode=interpolation, align_corners=False,
                                           antialias=True))
        out = torch.cat(views)  # (N*V, 3, S, S), image-major
    else:
        from torchvision.ops import roi_align

        device = images[0].device if n else boxes.device
        xyxy = boxes.to(dtype=torch.float32)
        xyxy = torch.stack([xyxy[..., 1], xyxy[..., 0], xyxy[..., 1] + xyxy[..., 3], xyxy[..., 0] + xyxy[..., 2]],
                           dim=-1).to(device, non_blocking=True)  # (N, V, 4) x1, y1, x2, y2
        for i, img in enumerate(images):
            views.append(roi_align(img.unsqueeze(0).float(), [xyxy[i]], output_size=size, spatial_scale=1.0,
                                   sampling_ratio=-1, aligned=True))
        out = torch.cat(views)
    return out.round_().clamp_(0, 255).to(torch.uint8).view(n, v, 3, size, size)


def jpeg_to_model_input(batch: dict[str, Any], aug_cfg: ViewAugConfig, device: torch.device | str,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        resize: str = "interpolate") -> torch.Tensor:
    """A :func:`collate_jpeg` batch -> normalised float views (V, N, 3, S, S) on ``device``.

    Decode (batched, on the device) -> crop + resize on the device -> :func:`.loader.to_model_input`
    (photometric ops and normalisation, the reference code).
    """
    images = decode_batch(batch, device)
    crops = crop_resize_batch(images, batch["boxes"], aug_cfg.img_size, aug_cfg.interpolation, resize)
    return to_model_input({"crops": crops, "photo": batch["photo"]}, aug_cfg, device, mean, std)


def imagefolder_files(root: str | os.PathLike, split: str = "train") -> tuple[list[str], list[int]]:
    """Image paths and labels of an ImageFolder tree, in the reference data set's order."""
    from .datasets import build_imagefolder

    ds = build_imagefolder(root, split)
    return [p for p, _ in ds.samples], [int(t) for _, t in ds.samples]


def build_jpeg_pretrain_loader(files: Sequence[str | os.PathLike], aug_cfg: ViewAugConfig, num_views: int,
                               seed: int, global_batch: int, start_step: int = 0, total_steps: int | None = None,
                               rank: int = 0, world_size: int = 1, num_workers: int = 0,
                               pin_memory: bool = False, persistent_workers: bool = False,
                               prefetch_factor: int | None = 2, labels: Sequence[int] | None = None,
                               dataset_cls: type[JpegViewDataset] | None = None) -> DataLoader:
    """DataLoader of :func:`collate_jpeg` batches, one per optimizer step (same order as the reference loader).

    Takes ``files`` (e.g. :func:`imagefolder_files`) instead of a decoded data set; everything else
    is :func:`.loader.build_pretrain_loader`'s signature, so the engine can switch with two lines.
    ``dataset_cls``: the worker-side data set (default :class:`JpegViewDataset`; the DALI path passes its own).
    """
    sampler = StepBatchSampler(len(files), global_batch, seed, start_step, total_steps, rank, world_size)
    ds = (dataset_cls or JpegViewDataset)(files, labels, aug_cfg, num_views, seed)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor}
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_jpeg,
                      pin_memory=pin_memory, **extra)


def prefetch_to_device(batches: Iterator[dict[str, Any]], aug_cfg: ViewAugConfig, device: torch.device,
                       resize: str = "interpolate") -> Iterator[dict[str, torch.Tensor]]:
    """:func:`jpeg_to_model_input` for each batch; on CUDA on a side stream, one step ahead of the consumer.

    On CUDA the device work for batch k+1 is enqueued on a side stream right after the consumer got
    batch k (and launched its step), so it overlaps step k; any host synchronisation inside it (a
    blocking copy of a small constant, nvJPEG's own stream) waits for the side stream only, never for
    the training step. The compute stream waits for the side stream on the GPU before using a batch.
    """
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None

    def prepare(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
            views = jpeg_to_model_input(batch, aug_cfg, device, resize=resize)
            seeds = batch["seed"].to(device, non_blocking=True)
        return {"views": views, "seed": seeds}

    it = iter(batches)
    batch = next(it, None)
    ready = prepare(batch) if batch is not None else None
    while ready is not None:
        if cuda:
            current = torch.cuda.current_stream(device)
            current.wait_stream(side)
            for t in ready.values():
                t.record_stream(current)  # allocated on the side stream, used on the compute stream
        yield ready
        batch = next(it, None)
        ready = prepare(batch) if batch is not None else None


def build_jpeg_loader(root: str | os.PathLike, aug_cfg: ViewAugConfig, num_views: int, seed: int,
                      global_batch: int, total_steps: int, num_workers: int, device: torch.device | str,
                      prefetch_factor: int | None = 2, split: str = "train", resize: str = "interpolate",
                      start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Model inputs ``{"views": (V, N, 3, S, S), "seed": (N,)}`` on ``device`` from an ImageFolder of JPEGs."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r} is not one of {RESIZE_MODES}")
    files, labels = imagefolder_files(root, split)
    loader = build_jpeg_pretrain_loader(files, aug_cfg, num_views, seed, global_batch, start_step, total_steps,
                                        num_workers=num_workers, prefetch_factor=prefetch_factor, labels=labels,
                                        persistent_workers=False)
    yield from prefetch_to_device(iter(loader), aug_cfg, torch.device(device), resize)


__all__ = ["JpegInfo", "JpegViewDataset", "NotAJpegError", "RESIZE_MODES", "build_jpeg_loader",
           "build_jpeg_pretrain_loader", "collate_jpeg", "crop_resize_batch", "decode_batch", "imagefolder_files",
           "jpeg_info", "jpeg_to_model_input", "prefetch_to_device", "read_bytes", "sample_view_params"]
