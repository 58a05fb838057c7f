"""Data set registry: built-in sets, on-disk fixtures in each set's exact format, error messages."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from canbench.config import ConfigError
from canbench.data.datasets import (
    DATASETS,
    DatasetNotFoundError,
    build_dataset,
    check_dataset_layout,
    stratified_split,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: see conftest.py


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (6, 5), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PIL.Image.new("RGB", size, colour)
    img.convert(mode).save(path)


def test_registry_names() -> None:
    for name in ("builtin", "builtin_heldout", "builtin_noise_blur", "builtin_rendition", "builtin_new_background",
                 "digits", "imagefolder", "cifar10", "cifar100", "caltech101", "stanfordcars", "dtd",
                 "oxfordiiitpet", "flowers102", "sun397", "imagenet"):
        assert name in DATASETS


def test_builtin_sets_via_registry() -> None:
    ds = build_dataset("builtin", split="val", size=20, img_size=16)
    img, label = ds[5]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == 5 % ds.num_classes
    held = build_dataset("builtin_heldout", split="test", size=10)
    assert held.family == "heldout" and held.classes != ds.classes
    nb = build_dataset("builtin_noise_blur", split="test", size=10, severity=5)
    assert nb.variant == "noise_blur" and nb.severity == 5
    assert build_dataset("digits", split="test")[0][0].shape == (3, 32, 32)


def test_unknown_name_and_split_errors() -> None:
    with pytest.raises(ConfigError, match="unknown data set 'cifar_10'.*did you mean 'cifar10'"):
        build_dataset("cifar_10")
    with pytest.raises(ConfigError, match="'digits' has no split 'val'; available: \\['test', 'train'\\]"):
        build_dataset("digits", split="val")
    with pytest.raises(ConfigError, match="'oxfordiiitpet' has no split 'val'"):
        build_dataset("oxfordiiitpet", root="/nonexistent", split="val")


@pytest.mark.parametrize("name", ["cifar10", "imagefolder", "caltech101", "stanfordcars", "dtd", "oxfordiiitpet",
                                  "flowers102", "sun397", "imagenet", "cifar100"])
def test_missing_root_fails_before_work_with_layout(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset(name, root=missing, split="train")
    msg = str(e.value)
    assert repr(name) in msg and str(missing) in msg and "expected layout" in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ConfigError)
    assert not missing.exists()  # nothing created
    with pytest.raises(DatasetNotFoundError, match="no root given"):
        build_dataset(name, root=None)


def test_wrong_layout_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetNotFoundError, match="missing file: .*data_batch_1") as e:
        build_dataset("cifar10", root=tmp_path)
    assert "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}" in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="missing folder: .*flowers-102/jpg"):
        build_dataset("flowers102", root=tmp_path)


# ----------------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_split_layout(tmp_path: Path) -> None:
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split in ("train", "val"):
        for cls, colour in colours.items():
            for i in range(2):
                _png(tmp_path / split / cls / f"{i}.png", colour)
    _png(tmp_path / "train" / "dog" / "gray.png", (0, 0, 255), mode="L")  # grayscale file -> 3 channels
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = build_dataset("imagefolder", root=tmp_path, split="train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 5
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 5, 6)
        if ds.imgs[i][0].endswith("gray.png"):
            assert torch.equal(img[0], img[1]) and label == 1
        else:
            assert img[:, 0, 0].tolist() == list(colours[ds.classes[label]])
    assert len(build_dataset("imagefolder", root=tmp_path, split="val")) == 4
    with pytest.raises(DatasetNotFoundError, match="split folder 'test' not found .*'train', 'val'"):
        build_dataset("imagefolder", root=tmp_path, split="test")


def test_imagefolder_flat_layout_and_jpeg(tmp_path: Path) -> None:
    for cls, colour in (("a", (10, 200, 10)), ("b", (200, 10, 10))):
        img = PIL.Image.new("RGB", (16, 12), colour)
        (tmp_path / cls).mkdir()
        img.save(tmp_path / cls / "x.jpg", quality=95)
    ds = build_dataset("imagefolder", root=tmp_path, split="test")
    assert [ds[i][1] for i in range(len(ds))] == [0, 1]
    img, _ = ds[1]
    assert img.shape == (3, 12, 16)
    assert (img[:, 6, 8].int() - torch.tensor([200, 10, 10])).abs().max() <= 6  # JPEG round trip


def test_imagefolder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no class folders"):
        build_dataset("imagefolder", root=tmp_path)
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        build_dataset("imagefolder", root=tmp_path)


# ----------------------------------------------------------------------------------------------------
# CIFAR python pickle batches


def _write_cifar10(root: Path, per_batch: int = 3) -> dict[str, list[int]]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    labels = {}
    for b, fname in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        lab = [(b + k) % 10 for k in range(per_batch)]
        data = np.zeros((per_batch, 3072), dtype=np.uint8)
        for k, y in enumerate(lab):
            img = np.zeros((3, 32, 32), np.uint8)
            img[0], img[1], img[2, 0, 0] = 10 * y, 255 - 10 * y, b  # red = 10 * label; marker in blue
            data[k] = img.reshape(-1)
        with open(base / fname, "wb") as f:
            pickle.dump({"batch_label": fname, "labels": lab, "data": data, "filenames": [b"x.png"] * per_batch}, f)
        labels[fname] = lab
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return labels


def test_cifar10_fixture_end_to_end(tmp_path: Path) -> None:
    labels = _write_cifar10(tmp_path)
    train = build_dataset("cifar10", root=tmp_path, split="train")
    test = build_dataset("cifar10", root=tmp_path, split="test")
    assert len(train) == 15 and len(test) == 3 and train.classes[3] == "cat"
    assert train.targets == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    for ds in (train, test):
        for i in range(len(ds)):
            img, y = ds[i]
            assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
            assert int(img[0, 5, 5]) == 10 * y and int(img[1, 0, 0]) == 255 - 10 * y  # channel order kept
    assert int(test[0][0][2, 0, 0]) == 5 and int(train[3][0][2, 0, 0]) == 1  # batch order kept


def test_check_dataset_layout_without_building(tmp_path: Path) -> None:
    check_dataset_layout("builtin", None, "val")
    with pytest.raises(DatasetNotFoundError, match="missing file: .*data_batch_1"):
        check_dataset_layout("cifar10", tmp_path, "test")
    _write_cifar10(tmp_path)
    check_dataset_layout("cifar10", tmp_path, "test")
    with pytest.raises(ConfigError, match="no split 'val'"):
        check_dataset_layout("cifar10", tmp_path, "val")
    _png(tmp_path / "folder" / "train" / "a" / "x.png", (1, 2, 3))
    check_dataset_layout("imagefolder", tmp_path / "folder", "train")
    with pytest.raises(DatasetNotFoundError, match="split folder 'val' not found"):
        check_dataset_layout("imagefolder", tmp_path / "folder", "val")


def test_cifar100_fixture(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for fname, n in (("train", 4), ("test", 2)):
        data = np.arange(n * 3072, dtype=np.int64).reshape(n, 3072).astype(np.uint8)
        with open(base / fname, "wb") as f:
            pickle.dump({"data": data, "fine_labels": list(range(n)), "coarse_labels": [0] * n}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    ds = build_dataset("cifar100", root=tmp_path, split="train")
    assert len(ds) == 4 and ds.targets == [0, 1, 2, 3] and ds.num_classes == 100
    assert ds[1][0].reshape(-1)[0] == 3072 % 256


# ----------------------------------------------------------------------------------------------------
# torchvision-backed sets with their own layouts


def test_oxford_pet_fixture_maps_train_to_trainval(tmp_path: Path) -> None:
    base = tmp_path / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    rows = {"trainval": [("Abyssinian_1", 1), ("beagle_2", 2), ("Abyssinian_3", 1)], "test": [("beagle_9", 2)]}
    for split, items in rows.items():
        lines = [f"{name} {label} {1 if name[0].isupper() else 2} 1" for name, label in items]
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for name, label in items:
            _png(base / "images" / f"{name}.jpg", (30 * label, 0, 0))
    train = build_dataset("oxfordiiitpet", root=tmp_path, split="train")
    assert len(train) == 3 and [train[i][1] for i in range(3)] == [0, 1, 0]
    assert train.classes == ["Abyssinian", "Beagle"]
    img, _ = train[1]
    assert img.dtype == torch.uint8 and img.shape == (3, 5, 6)
    assert len(build_dataset("oxfordiiitpet", root=tmp_path, split="test")) == 1


def test_dtd_fixture(tmp_path: Path) -> None:
    data = tmp_path / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    (data / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\nzigzagged/zig_0002.jpg\n")
    _png(data / "images" / "banded" / "banded_0001.jpg", (1, 2, 3))
    _png(data / "images" / "zigzagged" / "zig_0002.jpg", (4, 5, 6))
    ds = build_dataset("dtd", root=tmp_path, split="train")
    assert ds.classes == ["banded", "zigzagged"] and [ds[i][1] for i in range(2)] == [0, 1]
    with pytest.raises(DatasetNotFoundError, match="labels/val1.txt"):
        build_dataset("dtd", root=tmp_path, split="val")


def test_caltech101_fixture_derived_split(tmp_path: Path) -> None:
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for cls, n in (("BACKGROUND_Google", 2), ("accordion", 5), ("zebra", 5)):
        for i in range(1, n + 1):
            _png(cats / cls / f"image_{i:04d}.jpg", (50, 60, 70), mode="L" if cls == "zebra" else "RGB")
    train = build_dataset("caltech101", root=tmp_path, split="train")
    test = build_dataset("caltech101", root=tmp_path, split="test")
    assert train.classes == ["accordion", "zebra"]
    assert len(train) == 8 and len(test) == 2 and sorted(test.targets) == [0, 1]  # 20% of each class
    assert set(train.indices).isdisjoint(test.indices)
    img, label = test[1]
    assert img.shape[0] == 3 and img.dtype == torch.uint8 and label == test.targets[1]  # grayscale -> RGB


def test_stratified_split_is_deterministic_and_stratified() -> None:
    labels = [i % 3 for i in range(30)]
    tr, te = stratified_split(labels, "train"), stratified_split(labels, "test")
    assert sorted(tr + te) == list(range(30)) and len(te) == 6
    assert np.bincount([labels[i] for i in te]).tolist() == [2, 2, 2]
    assert stratified_split(labels, "test") == te and stratified_split(labels, "test", seed=1) != te
