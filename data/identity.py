"""Data set identity: which data a run was trained or evaluated on, recorded with every result.

A path says nothing about what it holds, so results carry an *identity* instead (compared as
``data.identity`` / ``eval.data.*.identity``):

- an ImageFolder split counts as ImageNet-1k when its class folders are exactly the 1,000 standard wnids
  and it holds the standard number of images (train 1,281,167, val 50,000);
- a split whose classes are some of those wnids, or which holds fewer images, is recorded as a *subset*,
  with its counts and a digest of its class list: comparable with runs on the same subset, never with the
  paper;
- any other tree is ``imagefolder`` with its counts and class digest;
- JFT-300M is private and cannot be recognised: ``data.dataset: jft`` *declares* that a root holds it (an
  ImageFolder tree is read as usual). Runs declared so are comparable with each other and with the paper's
  JFT cells; undeclared, they are an anonymous ImageFolder;
- generated sets (built-in, digits) and torchvision sets are identified by name (and version / size).

The check lists folders and counts directory entries (no image is opened) and is cached per split folder,
in memory and on disk (``$CANBENCH_CACHE`` or ``~/.cache/canbench``); a class folder is recounted only when
its modification time changed. Expectations live in :data:`EXPECTED` (tests put miniature ones there; the
rule itself never changes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canbench.io import write_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_SIZES = {"train": 1_281_167, "val": 50_000}


@dataclass(frozen=True)
class Expectation:
    """What a known data set looks like on disk: its class folder names and the images of each split."""

    name: str
    classes: tuple[str, ...]
    images: dict[str, int]


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in class-index order (timm's ``imagenet_synsets.txt``, read without importing it)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("timm is not installed: the ImageNet-1k wnid list comes from its data/_info folder")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / "imagenet_synsets.txt"
    wnids = tuple(path.read_text().split())
    if len(wnids) != 1000:
        raise ValueError(f"{path} lists {len(wnids)} wnids, expected 1000")
    return wnids


# name -> Expectation; None: the standard one, built on first use
EXPECTED: dict[str, Expectation | None] = {"imagenet-1k": None}


def expectation(name: str) -> Expectation:
    exp = EXPECTED[name]
    if exp is None:
        exp = EXPECTED[name] = Expectation(name, imagenet_wnids(), dict(IMAGENET_SIZES))
    return exp


def full_identity(name: str, split: str) -> dict[str, Any]:
    """The identity a complete copy of known set ``name``'s ``split`` has (what :func:`identify_split` returns)."""
    exp = expectation(name)
    if split not in exp.images:
        raise KeyError(f"{name} has no split {split!r} (known: {sorted(exp.images)})")
    return {"name": name, "split": split, "subset": False, "classes": len(exp.classes), "images": exp.images[split]}


def declared_identity(dataset: str, split: str) -> dict[str, Any]:
    """The identity of a set that cannot be recognised and is declared by name (JFT-300M)."""
    return {"name": DECLARED[dataset], "split": split, "declared": True}


DECLARED = {"jft": "jft-300m"}  # registry name -> the private data set a root is declared to hold


def _cache_dir() -> Path:
    return Path(os.environ.get("CANBENCH_CACHE") or Path.home() / ".cache" / "canbench") / "identity"


_MEMO: dict[str, dict[str, Any]] = {}


def scan_split(folder: str | os.PathLike) -> dict[str, int]:
    """``{class folder: number of images}`` of one ImageFolder split (cached; only changed folders are recounted)."""
    folder = Path(folder).resolve()
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
    cache_file = _cache_dir() / f"{key}.json"
    cached = _MEMO.get(key)
    if cached is None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cached = None
    cached = cached if isinstance(cached, dict) and cached.get("folder") == str(folder) else {"classes": {}}
    out, entries, changed = {}, {}, False
    with os.scandir(folder) as it:
        class_dirs = sorted((e.name, e.stat().st_mtime_ns) for e in it if e.is_dir() and not e.name.startswith("."))
    for name, mtime in class_dirs:
        old = cached["classes"].get(name)
        if old is not None and old[0] == mtime:
            n = old[1]
        else:
            with os.scandir(folder / name) as it:
                n = sum(1 for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS))
            changed = True
        out[name] = n
        entries[name] = [mtime, n]
    record = {"folder": str(folder), "classes": entries}
    _MEMO[key] = record
    if changed or set(entries) != set(cached["classes"]):
        try:
            write_json(cache_file, record)
        except OSError:  # a read-only home: the in-memory cache still serves this process
            pass
    return out


def class_digest(classes) -> str:
    return hashlib.sha256("\n".join(sorted(classes)).encode()).hexdigest()[:16]


def identify_split(folder: str | os.PathLike, split: str) -> dict[str, Any]:
    """The identity of one ImageFolder split: a known set (full or subset) or an anonymous ``imagefolder``."""
    counts = scan_split(folder)
    classes, images = tuple(sorted(counts)), sum(counts.values())
    for name in EXPECTED:
        exp = expectation(name)
        if split not in exp.images or not classes or not set(classes) <= set(exp.classes):
            continue
        full = set(classes) == set(exp.classes) and images == exp.images[split]
        out = {"name": name, "split": split, "subset": not full, "classes": len(classes), "images": images}
        if not full:
            out["class_digest"] = class_digest(classes)
        return out
    return {"name": "imagefolder", "split": split, "classes": len(classes), "images": images,
            "class_digest": class_digest(classes)}


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """``root/split`` when it exists, else ``root`` itself (an ImageFolder without split folders)."""
    root = Path(root)
    return root / split if (root / split).is_dir() else root


def identify(dataset: str, root: str | os.PathLike | None, split: str, *, builtin_version: int | None = None,
             size: int | None = None) -> dict[str, Any]:
    """The identity of ``split`` of data set ``dataset`` (a registry name) under ``root``."""
    if dataset in DECLARED:
        return declared_identity(dataset, split)
    if dataset in ("imagefolder", "imagenet"):
        if root is None or not Path(root).is_dir():
            return {"name": dataset, "split": split, "unreadable": str(root)}
        return identify_split(split_folder(root, split), split)
    if dataset.startswith("builtin"):
        return {"name": dataset, "split": split, "version": builtin_version, "size": size}
    return {"name": dataset, "split": split}


__all__ = ["DECLARED", "EXPECTED", "Expectation", "IMAGENET_SIZES", "class_digest", "declared_identity", "expectation",
           "full_identity", "identify", "identify_split", "imagenet_wnids", "scan_split", "split_folder"]
