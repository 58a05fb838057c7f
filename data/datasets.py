"""Data set registry: ``build_dataset(name, root, split) -> Dataset`` of ``(uint8 tensor (3, H, W), int label)``.

Every data set returns images as uint8 RGB tensors ``(3, H, W)`` at their stored resolution (file
decoders: ``torchvision.io.decode_image(..., mode=RGB)``; PIL images from torchvision classes are
converted), so one transform serves all. ``img_size`` only shapes the generated sets (builtin, digits).

A missing root, split folder or annotation file raises :class:`DatasetNotFoundError` (a
``ConfigError`` and a ``FileNotFoundError``) *before* any work, naming the data set, the path and the
expected on-disk layout.

Split names: ``train``/``val``/``test`` are mapped to each set's own names (e.g. Oxford-IIIT Pet
``train`` -> ``trainval``); a split a set does not have is an error listing the ones it has (no silent
fallback from val to test). Caltech-101 and SUN397 ship without splits: a deterministic stratified 80/20
train/test split (seed 0) is derived, see :func:`stratified_split`.

A file that cannot be decoded raises :class:`BadImageError` naming it; pretraining replaces such a sample
deterministically (:func:`read_or_replace`) and counts the files (:class:`BadImages`, up to
``data.max_bad_images``), evaluation stops (docs/data.md, "Unreadable images").

Why one module (~530 lines): the registry, the decoder every file-backed set uses and the policy for files
that decoder cannot read belong together; split, each part would import the others.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from canbench.config import ConfigError
from canbench.io import safe_pickle_load

from .builtin import VARIANTS, BuiltinShapes, load_digits

log = logging.getLogger(__name__)


class DatasetNotFoundError(ConfigError, FileNotFoundError):
    """A data set's root or files are missing; the message names the set, the path and the layout."""


def _missing(name: str, path: Path | str | None, layout: str, what: str = "") -> DatasetNotFoundError:
    where = "no root given (data.root)" if path is None else f"{what or 'not found'}: {path}"
    return DatasetNotFoundError(f"data set {name!r}: {where}\nexpected layout:\n{layout}")


# ----------------------------------------------------------------------------------------------------
# Image helpers


class BadImageError(ConfigError):
    """An image file of a data set cannot be read or decoded (empty, truncated, not an image, gone); ``path``
    names it. Pretraining replaces such a sample (:func:`read_or_replace`); evaluation stops naming the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        if "Original Traceback" in message:  # re-raised by a DataLoader worker: keep the original one-line message
            lines = [ln for ln in message.strip().splitlines() if ln.strip()]
            message = lines[-1].split("Error: ", 1)[-1].strip() if lines else message
        super().__init__(message)
        self.path = path


_TV_WHERE = re.compile(r"^\w+, \S+\.cpp:\d+, ")  # torchvision's "decode_jpeg, /path/decode_jpeg.cpp:171, " prefix


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to uint8 RGB ``(3, H, W)`` (torchvision.io; grayscale/CMYK/alpha converted).
    A file that cannot be read or decoded raises :class:`BadImageError` naming it."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates torchvision.io decoding (-> TorchCodec)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
            return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as e:
        raise unreadable_image(path, e) from None


def unreadable_image(path: str | os.PathLike, exc: BaseException) -> BadImageError:
    """:class:`BadImageError` for ``path`` with the first sentence of what the reader said (its source location cut)."""
    why = _TV_WHERE.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return BadImageError(f"unreadable image {path}: {why.split('. ')[0]}", path=os.fspath(path))


# Unreadable files in a pretraining set: each is replaced by another sample, a pure function of
# (seed, epoch, index, attempt), so runs stay reproducible whatever the workers; the run stops past
# data.max_bad_images (docs/data.md "Unreadable images").
STREAM_REPLACE = 102  # key of the replacement stream (outside rng's per-sample streams 1-4 and the order stream 101)
MAX_REPLACEMENTS = 16  # unreadable replacements in a row before a sample gives up


def replacement_index(n: int, seed: int, epoch: int, index: int, attempt: int) -> int:
    """The sample standing in for unreadable sample ``index`` at its ``attempt``-th try: uniform over the
    other ``n - 1`` samples, drawn from a generator keyed ``(seed, STREAM_REPLACE, epoch, index, attempt)``."""
    if n < 2:
        raise ConfigError(f"sample {index} is unreadable and the data set has no other sample to replace it")
    from canbench.rng import torch_generator

    j = int(torch.randint(n - 1, (1,), generator=torch_generator(seed, STREAM_REPLACE, epoch, index, attempt)))
    return j + (j >= index)


def read_or_replace(read: Callable[[int], Any], n: int, seed: int, epoch: int, index: int) -> tuple[Any, list[str]]:
    """``(read(j), bad_paths)``: ``j`` is ``index`` or, while ``read`` raises :class:`BadImageError`, the next
    :func:`replacement_index`; ``bad_paths`` lists the unreadable files met on the way (usually none)."""
    bad: list[str] = []
    j = index
    for attempt in range(MAX_REPLACEMENTS + 1):
        try:
            return read(j), bad
        except BadImageError as e:
            bad.append(e.path or f"index {j}")
            j = replacement_index(n, seed, epoch, index, attempt)
    raise BadImageError(f"sample {index} and {MAX_REPLACEMENTS} replacements are unreadable images (first: "
                        f"{bad[0]}, last: {bad[-1]}): is the data root readable?", path=bad[0])


def bad_image_limit(max_bad_images: float, n: int) -> int:
    """How many distinct unreadable files a run of ``n`` samples tolerates: ``data.max_bad_images`` as a count
    (>= 1) or as a fraction of ``n`` (< 1, rounded down)."""
    return int(max_bad_images) if max_bad_images >= 1 else int(max_bad_images * n)


class BadImages:
    """The distinct unreadable files a run met (in the order met) and its limit; :meth:`add` raises
    :class:`BadImageError` once there are more than ``limit``."""

    def __init__(self, limit: int, paths: Sequence[str] = ()) -> None:
        self.limit = limit
        self.paths: dict[str, None] = dict.fromkeys(paths)

    def add(self, paths: Sequence[str]) -> None:
        new = [p for p in paths if p not in self.paths]
        if not new:
            return
        for p in new:
            self.paths[p] = None
            log.warning("unreadable image %s: replaced by another sample (%d so far, limit %d)", p,
                        len(self.paths), self.limit)
        if len(self.paths) > self.limit:
            raise BadImageError(f"{len(self.paths)} unreadable images, more than data.max_bad_images allows "
                                f"({self.limit}); first: {next(iter(self.paths))}; fix or remove them, or raise "
                                "data.max_bad_images", path=next(iter(self.paths)))

    def summary(self, shown: int = 1000) -> dict[str, Any]:
        """``{"count", "limit", "paths"}`` for summary.json (the first ``shown`` paths)."""
        return {"count": len(self.paths), "limit": self.limit, "paths": list(self.paths)[:shown]}


def to_rgb_tensor(img: Any) -> torch.Tensor:
    """PIL image or uint8 tensor (C, H, W) -> uint8 RGB (3, H, W)."""
    if isinstance(img, PIL.Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3:
        if img.shape[0] == 3:
            return img
        if img.shape[0] == 1:
            return img.expand(3, -1, -1).contiguous()
        if img.shape[0] == 4:
            return img[:3].contiguous()
    raise TypeError(f"cannot convert {type(img).__name__} to a uint8 RGB tensor")


class RGBTensorDataset(Dataset):
    """Wraps a data set of (PIL or tensor image, label) so images come out as uint8 RGB (3, H, W)."""

    def __init__(self, base: Dataset, classes: Sequence[str] | None = None,
                 targets: Sequence[int] | None = None) -> None:
        self.base = base
        self.classes = list(classes if classes is not None else getattr(base, "classes", []))
        self._targets = targets

    @property
    def targets(self) -> list[int]:
        """Labels in index order."""
        if self._targets is not None:
            return list(self._targets)
        for attr in ("targets", "_labels", "y"):
            if hasattr(self.base, attr):
                return [int(t) for t in getattr(self.base, attr)]
        return [int(self.base[i][1]) for i in range(len(self))]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[index]
        if isinstance(label, (list, tuple)):
            label = label[0]
        return to_rgb_tensor(img), int(label)


class SubsetDataset(Dataset):
    """``base`` restricted to ``indices`` (keeps classes/targets)."""

    def __init__(self, base: Dataset, indices: Sequence[int], classes: Sequence[str],
                 base_targets: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)
        self.classes = list(classes)
        self._targets = [int(base_targets[i]) for i in self.indices]

    @property
    def targets(self) -> list[int]:
        """Labels in index order."""
        return list(self._targets)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[self.indices[index]]
        return to_rgb_tensor(img), int(label[0] if isinstance(label, (list, tuple)) else label)


def stratified_split(labels: Sequence[int], split: str, test_fraction: float = 0.2, seed: int = 0) -> list[int]:
    """Deterministic stratified split: per class a ``default_rng(seed)`` permutation; first share -> test."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test[idx[: int(round(len(idx) * test_fraction))]] = True
    return np.flatnonzero(test if split == "test" else ~test).tolist()


# ----------------------------------------------------------------------------------------------------
# CIFAR (python pickle batches); read directly because torchvision's class insists on the official
# md5 sums, which rules out the small fixtures the tests write in the same format.


def _cifar_batch(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """One CIFAR pickle (a Python 2 pickle: str decoded as latin-1), read with the restricted unpickler
    (:func:`canbench.io.safe_pickle_load`: plain data and NumPy arrays only, never code)."""
    entry = safe_pickle_load(path, encoding="latin1")
    missing = [k for k in keys if k not in entry] if isinstance(entry, dict) else list(keys)
    if missing:
        raise ConfigError(f"{path}: not a CIFAR batch: missing key(s) {missing} (a {type(entry).__name__})")
    return entry


class CIFARDataset(Dataset):
    """CIFAR-10 / CIFAR-100 from the python pickle batches (``cifar-10-batches-py`` / ``cifar-100-python``)."""

    FILES = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                    "batches.meta", "label_names", "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
    }

    def __init__(self, root: str | os.PathLike, split: str = "train", which: str = "cifar10") -> None:
        folder, train_files, test_files, meta, names_key, labels_key = self.FILES[which]
        base = Path(root) / folder
        data, labels = [], []
        for fname in train_files if split == "train" else test_files:
            entry = _cifar_batch(base / fname, ("data", labels_key))
            try:
                images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                ys = [int(x) for x in entry[labels_key]]
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{base / fname}: 'data' must hold rows of 3072 uint8 pixels and "
                                  f"{labels_key!r} integers ({e})") from None
            if len(ys) != len(images):
                raise ConfigError(f"{base / fname}: {len(images)} images but {len(ys)} {labels_key!r}")
            data.append(images)
            labels.extend(ys)
        self.classes = list(_cifar_batch(base / meta, (names_key,))[names_key])
        self.data = torch.from_numpy(np.concatenate(data))  # (N, 3, 32, 32) uint8
        self.labels = labels
        self.split = split

    @property
    def targets(self) -> list[int]:
        """Labels in index order."""
        return list(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], self.labels[index]


# ----------------------------------------------------------------------------------------------------
# ImageFolder


IMAGEFOLDER_LAYOUT = """  <root>/<split>/<class>/<image>.jpg|png|...  (ImageNet layout: root/train/n01440764/x.JPEG)
  or <root>/<class>/<image>                  (no split folders: every split reads the same images)"""
KNOWN_SPLIT_DIRS = ("train", "val", "test", "trainval")


def resolve_imagefolder_root(root: Path, split: str, name: str = "imagefolder") -> Path:
    """The class-folder root for ``split``: ``root/split`` if present, else ``root`` without split folders."""
    if not root.is_dir():
        raise _missing(name, root, IMAGEFOLDER_LAYOUT, "root folder not found")
    if (root / split).is_dir():
        return root / split
    present = [s for s in KNOWN_SPLIT_DIRS if (root / s).is_dir()]
    if present:
        raise _missing(name, root / split, IMAGEFOLDER_LAYOUT,
                       f"split folder {split!r} not found (found split folders {present})")
    if not any(p.is_dir() for p in root.iterdir()):
        raise _missing(name, root, IMAGEFOLDER_LAYOUT, "no class folders in")
    log.warning("data set %r: %s has no split folders; using its class folders for split %r", name, root, split)
    return root


def build_imagefolder(root: str | os.PathLike, split: str = "train", name: str = "imagefolder") -> Dataset:
    """torchvision ImageFolder over ``root/split`` (or ``root``) decoding to uint8 RGB tensors."""
    from torchvision.datasets import ImageFolder

    class_root = resolve_imagefolder_root(Path(root), split, name)
    try:
        ds = ImageFolder(str(class_root), loader=decode_rgb)
    except FileNotFoundError as e:  # no class folder holds an image file
        raise _missing(name, class_root, IMAGEFOLDER_LAYOUT, f"no images ({e})") from None
    return ds


# ----------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one data set: split map, root need, expected layout and required paths."""

    build: Callable[[Path | None, str, int, dict[str, Any]], Dataset]
    splits: dict[str, str]  # our split name -> the set's own name
    needs_root: bool = True
    layout: str = ""
    required: Callable[[str, dict[str, Any]], list[str]] = field(default=lambda split, kw: [])


def _builtin(family: str = "main", variant: str = "clean") -> DatasetSpec:
    def build(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
        kw = {"family": family, "variant": variant, **kw}
        return BuiltinShapes(split=split, img_size=img_size, **kw)
    return DatasetSpec(build, {"train": "train", "val": "val", "test": "test"}, needs_root=False)


def _tv(cls_name: str, **fixed: Any) -> Callable[[Path | None, str, int, dict[str, Any]], Dataset]:
    def build(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        base = cls(str(root), split=split, download=False, **fixed, **kw)
        return RGBTensorDataset(base)
    return build


def _unsplit(cls_name: str, labels_attr: str, classes_attr: str, **fixed: Any):
    """A torchvision set without splits -> deterministic stratified 80/20 train/test subset."""
    def build(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
        import torchvision.datasets as tvd

        base = getattr(tvd, cls_name)(str(root), download=False, **fixed, **kw)
        labels = [int(t) for t in getattr(base, labels_attr)]
        seed = 0
        return SubsetDataset(base, stratified_split(labels, split, 0.2, seed), getattr(base, classes_attr), labels)
    return build


def _cifar(which: str) -> Callable[[Path | None, str, int, dict[str, Any]], Dataset]:
    def build(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
        if kw:
            raise ConfigError(f"data set {which!r} takes no extra arguments, got {sorted(kw)}")
        return CIFARDataset(root, split, which)
    return build


def _imagenet(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
    import torchvision.datasets as tvd

    return RGBTensorDataset(tvd.ImageNet(str(root), split=split, loader=decode_rgb, **kw))


def _imagefolder(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
    if kw:
        raise ConfigError(f"data set 'imagefolder' takes no extra arguments, got {sorted(kw)}")
    return build_imagefolder(root, split)


def _digits(root: Path | None, split: str, img_size: int, kw: dict[str, Any]) -> Dataset:
    if kw:
        raise ConfigError(f"data set 'digits' takes no extra arguments, got {sorted(kw)}")
    return load_digits(split, img_size)


_CIFAR10_FILES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + [
    "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]
_CIFAR100_FILES = ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]


def _cars_required(split: str, kw: dict[str, Any]) -> list[str]:
    if split == "train":
        return ["stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                "stanford_cars/cars_train/"]
    return ["stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_test_annos_withlabels.mat",
            "stanford_cars/cars_test/"]


DATASETS: dict[str, DatasetSpec] = {
    "builtin": _builtin(),
    "builtin_heldout": _builtin(family="heldout"),
    **{f"builtin_{v}": _builtin(variant=v) for v in VARIANTS if v != "clean"},
    "digits": DatasetSpec(_digits, {"train": "train", "test": "test"}, needs_root=False),
    "imagefolder": DatasetSpec(_imagefolder, {}, layout=IMAGEFOLDER_LAYOUT),
    # JFT-300M is private: an ImageFolder tree the user declares to be JFT (data/identity.py)
    "jft": DatasetSpec(_imagefolder, {}, layout=IMAGEFOLDER_LAYOUT + "\n  (your copy of JFT-300M: declared)"),
    "cifar10": DatasetSpec(
        _cifar("cifar10"), {"train": "train", "test": "test"},
        layout="  <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}  (python pickle batches)",
        required=lambda split, kw: _CIFAR10_FILES),
    "cifar100": DatasetSpec(
        _cifar("cifar100"), {"train": "train", "test": "test"},
        layout="  <root>/cifar-100-python/{train, test, meta}  (python pickle batches)",
        required=lambda split, kw: _CIFAR100_FILES),
    "caltech101": DatasetSpec(
        _unsplit("Caltech101", "y", "categories", target_type="category"), {"train": "train", "test": "test"},
        layout="  <root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg  (split: stratified 80/20, seed 0)",
        required=lambda split, kw: ["caltech101/101_ObjectCategories/"]),
    "stanfordcars": DatasetSpec(
        _tv("StanfordCars"), {"train": "train", "test": "test"},
        layout="  <root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/,\n"
               "                       cars_test_annos_withlabels.mat, cars_test/}",
        required=_cars_required),
    "dtd": DatasetSpec(
        _tv("DTD"), {"train": "train", "val": "val", "test": "test"},
        layout="  <root>/dtd/dtd/{images/<class>/*.jpg, labels/{train,val,test}<partition>.txt}",
        required=lambda split, kw: ["dtd/dtd/images/", f"dtd/dtd/labels/{split}{kw.get('partition', 1)}.txt"]),
    "oxfordiiitpet": DatasetSpec(
        _tv("OxfordIIITPet", target_types="category"), {"train": "trainval", "test": "test"},
        layout="  <root>/oxford-iiit-pet/{images/<Name_N>.jpg, annotations/{trainval,test}.txt}",
        required=lambda split, kw: ["oxford-iiit-pet/images/", f"oxford-iiit-pet/annotations/{split}.txt"]),
    "flowers102": DatasetSpec(
        _tv("Flowers102"), {"train": "train", "val": "val", "test": "test"},
        layout="  <root>/flowers-102/{jpg/image_00001.jpg, imagelabels.mat, setid.mat}",
        required=lambda split, kw: ["flowers-102/jpg/", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"]),
    "sun397": DatasetSpec(
        _unsplit("SUN397", "_labels", "classes"), {"train": "train", "test": "test"},
        layout="  <root>/SUN397/{ClassName.txt, a/abbey/sun_*.jpg, ...}  (split: stratified 80/20, seed 0)",
        required=lambda split, kw: ["SUN397/ClassName.txt"]),
    "imagenet": DatasetSpec(
        _imagenet, {"train": "train", "val": "val"},
        layout="  <root>/{meta.bin or ILSVRC2012_devkit_t12.tar.gz, train/<wnid>/*.JPEG, val/<wnid>/*.JPEG}\n"
               "  (torchvision.datasets.ImageNet; for a plain folder tree use 'imagefolder')",
        required=lambda split, kw: [f"{split}/"]),
}


def _check_required(name: str, root: Path, spec: DatasetSpec, split: str, kw: dict[str, Any]) -> None:
    for rel in spec.required(split, kw):
        path = root / rel
        ok = path.is_dir() if rel.endswith("/") else path.is_file()
        if not ok:
            raise _missing(name, path, spec.layout, "missing " + ("folder" if rel.endswith("/") else "file"))
    if name == "imagenet" and not ((root / "meta.bin").is_file() or (root / "ILSVRC2012_devkit_t12.tar.gz").is_file()):
        raise _missing(name, root / "meta.bin", spec.layout, "missing file")


def check_dataset_layout(name: str, root: str | os.PathLike | None, split: str = "train", **kw: Any) -> None:
    """Cheap path checks of ``build_dataset(name, root, split, **kw)`` without building anything."""
    spec = _spec(name, split)
    if spec.needs_root:
        path = _root(name, spec, root)
        _check_required(name, path, spec, spec.splits.get(split, split), kw)
        if name in ("imagefolder", "jft"):
            resolve_imagefolder_root(path, split, name)


def _spec(name: str, split: str) -> DatasetSpec:
    spec = DATASETS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"unknown data set {name!r}{hint}; known: {sorted(DATASETS)}")
    if spec.splits and split not in spec.splits:
        raise ConfigError(f"data set {name!r} has no split {split!r}; available: {sorted(spec.splits)}")
    return spec


def _root(name: str, spec: DatasetSpec, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise _missing(name, None, spec.layout)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise _missing(name, path, spec.layout, "root folder not found")
    return path


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", img_size: int = 32,
                  **kw: Any) -> Dataset:
    """Build data set ``name`` (see ``DATASETS``) for ``split``; items are (uint8 (3, H, W), int label).

    ``kw`` goes to the set's constructor (builtin: ``size``, ``seed``, ``severity``, ``scene``; dtd:
    ``partition``); a set that takes none rejects any.
    """
    spec = _spec(name, split)
    own_split = spec.splits.get(split, split)
    path: Path | None = None
    if spec.needs_root:
        path = _root(name, spec, root)
        _check_required(name, path, spec, own_split, kw)
    return spec.build(path, own_split, img_size, kw)
