"""The built-in procedural shapes data set and the bundled digits."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from canbench.config import ConfigError
from canbench.data import builtin as B
from canbench.data.builtin import (
    HELDOUT_CLASSES,
    MAIN_CLASSES,
    MIN_CONTRAST,
    BuiltinShapes,
    cos_sin_turns,
    load_digits,
    luminance,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: see conftest.py


# sha256 of the bytes of BuiltinShapes(split, seed=0, img_size=32, **kw)[index][0] (uint8 (3, 32, 32), C order).
# Recorded once (numpy 2.4, x86_64); a change means the built-in data set changed: update docs/data.md and
# treat earlier results on it as a different data set.
GOLDEN: dict[tuple[str, int, tuple], str] = {
    ("train", 0, ()): "8528aa345b0c927a2b1bd37c59cc0489bf98b87d3874ae83e293f8851e7a0dd7",
    ("train", 7, ()): "c9e29c8fd0ee1d0aaa82fabac483cdfd104a1211761f4103362d50bd3e24e82b",
    ("test", 3, ()): "2f2ead092fbce96167ae8d30089f4f92215d97c9664c2b8a491142d1f0668bbc",
    ("val", 11, (("family", "heldout"),)): "2df6d196d59a4e8311dc972746d8e8a5516b74bc0d9a624dd4fc51b47a4836e2",
    ("test", 5, (("severity", 5), ("variant", "noise_blur"))):
        "6e77b316ffee5d2a82834ce753a767dbf5a1229b88c649fa5ed7cec03519697e",
    ("test", 5, (("variant", "rendition"),)): "a4c174f87681814e82373258d6dba58a40759c6bd0207c202fac33d3f8917f04",
    ("test", 5, (("variant", "new_background"),)): "f1cf8522d603b7ac608d992b0a9b142552f32b8dae6cf9c11bf954da17f5bac8",
    ("test", 5, (("variant", "occlusion"),)): "b84bfc97c55fd314fbf34e51f3e56de0c77aea1dee6206aef307a3ef5feb97e8",
}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def test_golden_digests() -> None:
    """Hard-coded digests (catch accidental changes) and digests computed now from a fresh instance."""
    for (split, index, kw), digest in GOLDEN.items():
        ds = BuiltinShapes(split, size=index + 1, cache_mb=0, **dict(kw))
        assert _sha(ds[index][0]) == digest, (split, index, kw)
        assert hashlib.sha256(ds.render(index).tobytes()).hexdigest() == digest


def test_images_are_pure_functions_of_seed_split_index() -> None:
    a = BuiltinShapes("train", size=50, seed=3)
    b = BuiltinShapes("train", size=50, seed=3, cache_mb=0)  # no cache: rendered from scratch
    for i in (0, 7, 49, 7):  # any order, repeated access
        assert _sha(a[i][0]) == _sha(b[i][0])
    assert _sha(a[7][0]) == hashlib.sha256(a.render(7).tobytes()).hexdigest()
    assert _sha(BuiltinShapes("train", size=50, seed=4)[7][0]) != _sha(a[7][0])
    # size does not change an image: index i of a larger set is the same image
    assert _sha(BuiltinShapes("train", size=500, seed=3)[7][0]) == _sha(a[7][0])


def test_item_format_labels_and_classes() -> None:
    ds = BuiltinShapes("val", size=30)
    img, label = ds[13]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert label == 13 % ds.num_classes and ds.targets[13] == label
    assert ds.num_classes == len(MAIN_CLASSES) >= 10 and ds.classes == list(MAIN_CLASSES)
    held = BuiltinShapes("train", size=12, family="heldout")
    assert held.num_classes == len(HELDOUT_CLASSES) >= 5
    assert not set(MAIN_CLASSES) & set(HELDOUT_CLASSES)
    assert BuiltinShapes("test", size=4, img_size=64)[3][0].shape == (3, 64, 64)
    with pytest.raises(IndexError, match="index 30"):
        ds[30]


def test_splits_and_families_share_no_images() -> None:
    hashes = {}
    for split in ("train", "val", "test"):
        hashes[split] = {_sha(BuiltinShapes(split, size=150)[i][0]) for i in range(150)}
        assert len(hashes[split]) == 150
    held = {_sha(BuiltinShapes("train", size=150, family="heldout")[i][0]) for i in range(150)}
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"] and not held & hashes["train"]


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ConfigError, match="split='dev'"):
        BuiltinShapes("dev")
    with pytest.raises(ConfigError, match="variant='foggy'"):
        BuiltinShapes(variant="foggy")
    with pytest.raises(ConfigError, match="severity=6"):
        BuiltinShapes(variant="noise_blur", severity=6)
    with pytest.raises(ConfigError, match="family='extra'"):
        BuiltinShapes(family="extra")
    with pytest.raises(ConfigError, match="img_size=4"):
        BuiltinShapes(img_size=4)


def test_shift_variants() -> None:
    n = 40
    clean = torch.stack([BuiltinShapes("test", size=n)[i][0] for i in range(n)]).float()

    def load(**kw) -> torch.Tensor:
        ds = BuiltinShapes("test", size=n, **kw)
        return torch.stack([ds[i][0] for i in range(n)]).float()

    diffs = [float((load(variant="noise_blur", severity=s) - clean).abs().mean()) for s in (1, 3, 5)]
    assert 0 < diffs[0] < diffs[1] < diffs[2]  # severity increases the corruption
    # noise_blur corrupts the clean image of the same index (same object), it does not redraw it
    nb = load(variant="noise_blur", severity=1)
    assert float((nb - clean).abs().mean()) < float((nb - clean.roll(1, 0)).abs().mean()) / 2
    sketch = load(variant="rendition")
    assert torch.equal(sketch[:, 0], sketch[:, 1]) and torch.equal(sketch[:, 1], sketch[:, 2])  # gray ink/paper
    assert float(sketch.mean()) > 150  # light paper, thin strokes
    newbg = load(variant="new_background")
    assert float((newbg - clean).abs().mean()) > 20
    occ = load(variant="occlusion")
    changed = (occ != clean).any(dim=1).float().mean(dim=(1, 2))  # fraction of pixels changed per image
    assert (changed > 0.03).all() and (changed < 0.5).all()


def test_training_palette_avoids_the_new_background_hues() -> None:
    rng = np.random.default_rng(0)
    lo, hi = B.TRAIN_HUE_GAP
    for new in (False, True):
        hues = []
        for _ in range(300):
            r, g, b = (c / 255 for c in B._palette(rng, new))
            mx, mn = max(r, g, b), min(r, g, b)
            if mx - mn < 0.15:
                continue  # hue ill-defined for near-gray colours
            if mx == r:
                h = ((g - b) / (mx - mn) / 6) % 1
            elif mx == g:
                h = (b - r) / (mx - mn) / 6 + 1 / 3
            else:
                h = (r - g) / (mx - mn) / 6 + 2 / 3
            hues.append(h)
        margin = -0.02 if new else 0.02  # 8-bit rounding moves hues slightly
        inside = np.mean([lo + margin < h < hi - margin for h in hues])
        assert len(hues) > 100 and inside == (1.0 if new else 0.0)


def test_object_contrasts_with_both_background_colours() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        fg, b0, b1 = B._draw_colours(rng, False, rng.uniform(0, 1))
        lf, l0, l1 = luminance(fg), luminance(b0), luminance(b1)
        assert (l0 <= lf - MIN_CONTRAST + 1e-9 and l1 <= lf - MIN_CONTRAST + 1e-9) or (
            l0 >= lf + MIN_CONTRAST - 1e-9 and l1 >= lf + MIN_CONTRAST - 1e-9)


def test_colour_statistics_do_not_predict_the_class() -> None:
    """Nuisances are class independent: per-image colour mean/std are near chance for a linear probe."""
    from sklearn.linear_model import LogisticRegression

    def stats(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        ds = BuiltinShapes(split, size=n, img_size=16)  # same scenes, 4x fewer pixels
        x = torch.stack([ds[i][0] for i in range(n)]).float() / 255
        f = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1).numpy()
        return f, np.array(ds.targets)

    xtr, ytr = stats("train", 400)
    xte, yte = stats("test", 200)
    acc = LogisticRegression(max_iter=500).fit(xtr, ytr).score(xte, yte)
    assert acc < 0.25  # chance is 0.1


def test_cos_sin_turns_is_accurate() -> None:
    for t in np.linspace(-2.0, 3.0, 2001):
        c, s = cos_sin_turns(float(t))
        assert abs(c - math.cos(2 * math.pi * t)) < 1e-12 and abs(s - math.sin(2 * math.pi * t)) < 1e-12


def test_digits() -> None:
    train, test = load_digits("train"), load_digits("test", img_size=16)
    assert len(train) + len(test) == 1797 and abs(len(test) / 1797 - 0.2) < 0.01
    img, label = train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and 0 <= label < 10
    assert torch.equal(img[0], img[1]) and img.max() > 200
    assert test[0][0].shape == (3, 16, 16) and train.num_classes == 10
    counts = np.bincount(test.targets, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # stratified: ~20% of each class (174-183 each)
    again = load_digits("train")
    assert torch.equal(again.images, train.images) and again.targets == train.targets
    train16 = load_digits("train", img_size=16)
    test_hashes = {_sha(test.images[i]) for i in range(len(test))}
    assert not test_hashes & {_sha(train16.images[i]) for i in range(len(train16))}  # disjoint splits
    with pytest.raises(ConfigError, match="split='val'"):
        load_digits("val")


def test_instances_of_the_same_images_share_one_render(monkeypatch):
    """Each suite builds its own data set: the second instance of the same images renders nothing again, and
    what it returns equals a fresh render (a changed scene or split is a different set, rendered anew)."""
    from canbench.data import builtin

    calls = []
    real = builtin.BuiltinShapes.render
    monkeypatch.setattr(builtin.BuiltinShapes, "render", lambda self, i: calls.append(i) or real(self, i))
    a = builtin.BuiltinShapes("val", size=12, seed=7)
    first = [a[i][0] for i in range(12)]
    assert len(calls) == 12
    b = builtin.BuiltinShapes("val", size=12, seed=7)
    second = [b[i][0] for i in range(12)]
    assert len(calls) == 12  # nothing rendered twice
    for i in range(12):
        assert torch.equal(first[i], second[i])
        assert torch.equal(second[i], torch.from_numpy(real(b, i)))
    builtin.BuiltinShapes("val", size=12, seed=8)[0]
    builtin.BuiltinShapes("val", size=12, seed=7, scene=builtin.SceneParams(clutter_max=0))[0]
    assert len(calls) == 14
