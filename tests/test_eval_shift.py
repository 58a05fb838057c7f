"""Distribution-shift sets on fixtures written in each set's real on-disk format.

Every fixture image is a constant colour whose red value encodes an id; a look-up-table model reads
the id back after the eval transform and returns the logits the test chose for that image, so the
scoring rules are checked against hand-computed answers. An ObjectNet image carries a 2 px border of
another colour: if the border were not cropped the colour would not be constant and the id unreadable.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from canbench.evaluation.label_space import GroupMax, MultiLabel, SubsetArgmax
from canbench.evaluation.shift import evaluate_shift, mce
from canbench.evaluation.shift_data import (
    ALEXNET_ERR,
    IMAGENET_C_CORRUPTIONS,
    ShiftDataError,
    build_shift_set,
    imagenet_class_names,
    imagenet_wnids,
    subset_indices,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIZE = 8


def write_image(path: Path, img_id: int, border: int = 0) -> None:
    """A 12x12 image of red value 10 * img_id (+ a green border of ``border`` px)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (12 + 2 * border, 12 + 2 * border), (0, 200, 0))
    im.paste(Image.new("RGB", (12, 12), (10 * img_id, 50, 90)), (border, border))
    if path.suffix.lower() in (".jpeg", ".jpg"):
        im.save(path, format="JPEG", quality=98)
    else:
        im.save(path, format="PNG")


class LUTModel(torch.nn.Module):
    """Reads the image id from the red channel; returns ``table[id]`` (num_classes,) as logits."""

    def __init__(self, table: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0] * STD[0] + MEAN[0]  # (N, S, S) in [0, 1]
        assert float((red.amax((1, 2)) - red.amin((1, 2))).max()) < 0.03, "image is not a constant colour"
        ids = (red.mean((1, 2)) * 255 / 10).round().long().tolist()
        return torch.stack([self.table[i] for i in ids])


def logits(**cols: float) -> torch.Tensor:
    out = torch.zeros(1000)
    for k, v in cols.items():
        out[int(k.lstrip("c"))] = v
    return out


def run(model, sets, roots, **kw):
    return evaluate_shift(model, sets, roots, img_size=SIZE, crop_pct=1.0, mean=MEAN, std=STD, batch_size=2, **kw)


def test_imagenet_a_and_r_restrict_logits_to_their_200_columns(tmp_path):
    wnids = imagenet_wnids()
    a_idx, src = subset_indices("a")
    assert len(a_idx) == 200 and src.startswith("timm") and 0 not in a_idx
    c1, c2 = a_idx[0], a_idx[5]
    write_image(tmp_path / "a" / wnids[c1] / "x1.jpg", 1)
    write_image(tmp_path / "a" / wnids[c2] / "x2.jpg", 2)
    table = {
        1: logits(c0=9.0, **{f"c{c1}": 5.0}),  # best column 0 is outside the 200: ignored -> correct
        2: logits(**{f"c{c1}": 7.0, f"c{c2}": 5.0}),  # wrong inside the 200 columns too
    }
    model = LUTModel(table)
    assert run(model, ["imagenet_a"], {"imagenet_a": tmp_path / "a"}) == {"imagenet_a": 50.0}
    one_k = run(model, ["imagenet_a"], {"imagenet_a": tmp_path / "a"}, set_options={"ar_mode": "1000"})
    assert one_k == {"imagenet_a": 0.0}
    # the rule looks at exactly the 200 columns: any change outside them never changes a prediction
    rule = SubsetArgmax(a_idx)
    x = torch.randn(50, 1000)
    y = x.clone()
    outside = torch.ones(1000, dtype=torch.bool)
    outside[a_idx] = False
    y[:, outside] += 100 * torch.rand(50, int(outside.sum()))
    targets = torch.tensor(a_idx)[torch.randint(0, 200, (50,))]
    assert torch.equal(rule.score(x, targets)[0], rule.score(y, targets)[0])
    r_idx, _ = subset_indices("r")
    write_image(tmp_path / "r" / wnids[r_idx[3]] / "y.jpg", 3)
    assert run(LUTModel({3: logits(c0=50.0, **{f"c{r_idx[3]}": 1.0})}), ["imagenet_r"],
               {"imagenet_r": tmp_path / "r"}) == {"imagenet_r": 100.0}


def test_folder_outside_the_subset_is_an_error(tmp_path):
    write_image(tmp_path / imagenet_wnids()[0] / "x.jpg", 1)  # tench is not an ImageNet-A class
    with pytest.raises(ShiftDataError, match=r"imagenet_a: folder .*n01440764 is not a wnid of the set's class"):
        build_shift_set("imagenet_a", tmp_path)


def test_real_excludes_empty_label_lists_from_numerator_and_denominator(tmp_path):
    root = tmp_path / "val"
    for i in range(1, 6):
        write_image(root / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    (root / "real.json").write_text(json.dumps([[3], [], [5, 7], [2], []]))
    table = {1: logits(c3=1.0), 2: logits(c3=1.0), 3: logits(c7=1.0), 4: logits(c9=1.0), 5: logits(c1=1.0)}
    details: dict = {}
    res = run(LUTModel(table), ["imagenet_real"], {"imagenet_real": root}, details=details)
    # valid: images 1, 3, 4 (2 and 5 have empty lists); correct: 1 and 3
    assert res["imagenet_real"] == pytest.approx(200 / 3)
    assert details["imagenet_real"]["valid"] == 3 and details["imagenet_real"]["n"] == 5
    rule = MultiLabel([[1], [], [0, 2]], num_classes=3)
    correct, valid = rule.score(torch.tensor([[0, 5.0, 0], [9.0, 0, 0], [0, 0, 1.0]]), torch.tensor([0, 1, 2]))
    assert correct.tolist() == [True, False, True] and valid.tolist() == [True, False, True]


def test_real_json_malformed_or_missing_is_named(tmp_path):
    write_image(tmp_path / "ILSVRC2012_val_00000001.JPEG", 1)
    (tmp_path / "real.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ShiftDataError, match=r"imagenet_real: .*real\.json is malformed; expected a JSON list"):
        build_shift_set("imagenet_real", tmp_path)
    (tmp_path / "real.json").write_text(json.dumps([[1]]))
    write_image(tmp_path / "ILSVRC2012_val_00000002.JPEG", 2)
    with pytest.raises(ShiftDataError, match="ILSVRC2012_val_00000002.JPEG has no entry"):
        build_shift_set("imagenet_real", tmp_path)


def test_v2_integer_folders_map_to_their_class_not_to_sorted_order(tmp_path):
    for folder, img_id in (("2", 1), ("10", 2), ("999", 3)):
        write_image(tmp_path / folder / f"{img_id}.jpeg", img_id)
    s = build_shift_set("imagenet_v2", tmp_path)
    by_folder = {p.parent.name: t for p, t in s.dataset.samples}
    assert by_folder == {"2": 2, "10": 10, "999": 999}  # ImageFolder would say 10 -> 0, 2 -> 1, 999 -> 2
    table = {1: logits(c2=1.0), 2: logits(c10=1.0), 3: logits(c1=1.0)}
    assert run(LUTModel(table), ["imagenet_v2"], {"imagenet_v2": tmp_path}) == {"imagenet_v2": pytest.approx(200 / 3)}
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(ShiftDataError, match="imagenet_v2: folder .*n01440764 is not an integer class id"):
        build_shift_set("imagenet_v2", tmp_path)


def test_wnid_sets_label_by_the_1000_class_list_not_folder_order(tmp_path):
    wnids = imagenet_wnids()
    write_image(tmp_path / wnids[500] / "a.JPEG", 1)
    write_image(tmp_path / wnids[7] / "b.JPEG", 2)
    s = build_shift_set("imagenet_sketch", tmp_path)
    assert sorted(t for _, t in s.dataset.samples) == [7, 500]
    table = {1: logits(c500=1.0), 2: logits(c8=1.0)}
    assert run(LUTModel(table), ["imagenet_sketch", "imagenet"],
               {"imagenet_sketch": tmp_path, "imagenet": tmp_path}) == {"imagenet_sketch": 50.0, "imagenet": 50.0}


def _objectnet(root: Path, release_tables: bool) -> dict[str, int]:
    names = imagenet_class_names()
    idx = {"analog": names.index("analog clock"), "digital": names.index("digital clock"),
           "banana": names.index("banana")}
    maps = root / "mappings"
    maps.mkdir(parents=True)
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "air_freshener": "Air freshener"}))
    if release_tables:  # the release's own name table, in a different line order than the class index
        perm = list(range(1000))[::-1]
        (maps / "imagenet_to_label_2012_v2").write_text("\n".join(names[p] for p in perm) + "\n")
        (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(p): i for i, p in enumerate(perm)}))
    write_image(root / "images" / "alarm_clock" / "1.png", 1, border=2)
    write_image(root / "images" / "banana" / "2.png", 2, border=2)
    write_image(root / "images" / "banana" / "3.png", 3, border=2)
    write_image(root / "images" / "air_freshener" / "4.png", 4, border=2)  # outside the mapped classes
    return idx


@pytest.mark.parametrize("release_tables", [False, True])
def test_objectnet_max_over_mapped_logits_drops_unmapped_and_crops_border(tmp_path, release_tables):
    i = _objectnet(tmp_path, release_tables)
    a, d, b = (f"c{i[k]}" for k in ("analog", "digital", "banana"))
    table = {
        1: logits(**{a: 1.0, d: 5.0, b: 3.0}),  # alarm clock = max(1, 5) = 5 > banana 3: correct
        2: logits(c0=100.0, **{a: 1.0, d: 1.5, b: 2.0}),  # column 0 is unmapped: ignored; banana: correct
        3: logits(**{a: 0.0, d: 4.0, b: 3.0}),  # alarm clock 4 > banana 3: wrong
    }
    details: dict = {}
    res = run(LUTModel(table), ["objectnet"], {"objectnet": tmp_path}, details=details)
    assert res == {"objectnet": pytest.approx(200 / 3)}
    assert details["objectnet"]["dropped_images"] == 1 and details["objectnet"]["classes"] == 2
    assert details["objectnet"]["n"] == 3 and details["objectnet"]["border_px"] == 2
    s = build_shift_set("objectnet", tmp_path)
    img, _ = s.dataset[0]
    assert img.size == (16, 16) and s.pre_transform(img).size == (12, 12)
    # without the crop the green border leaks into the resized image: the model refuses it
    with pytest.raises(AssertionError, match="not a constant colour"):
        run(LUTModel(table), ["objectnet"], {"objectnet": tmp_path}, set_options={"border_px": 0})
    g = GroupMax([[0, 1], [2]])
    assert g.group_scores(torch.tensor([[1.0, 3.0, 2.0]])).tolist() == [[3.0, 2.0]]


def test_objectnet_unknown_imagenet_name_is_named(tmp_path):
    _objectnet(tmp_path, release_tables=False)
    (tmp_path / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps({"Banana": "bananas"}))
    with pytest.raises(ShiftDataError, match="ImageNet class name 'bananas' of 'Banana'.*is unknown"):
        build_shift_set("objectnet", tmp_path)


def test_mce_arithmetic_by_hand():
    errors = {c: [0.5] * 5 for c in IMAGENET_C_CORRUPTIONS}
    errors["fog"] = [0.1, 0.2, 0.3, 0.4, 0.5]
    res = mce(errors)
    ce_fog = 100 * 0.3 / 0.819324
    assert res["CE"]["fog"] == pytest.approx(ce_fog)
    assert res["CE"]["brightness"] == pytest.approx(100 * 0.5 / 0.564592)
    expect = (sum(100 * 0.5 / ALEXNET_ERR[c] for c in IMAGENET_C_CORRUPTIONS if c != "fog") + ce_fog) / 15
    assert res["mCE"] == pytest.approx(expect)
    with pytest.raises(ValueError, match="missing"):
        mce({"fog": [0.1]})


def test_imagenet_c_folders_end_to_end(tmp_path):
    wnid = imagenet_wnids()[4]
    table, img_id = {}, 1
    wrong = {"gaussian_noise": [0, 1, 1, 2, 2], "fog": [0, 0, 1, 1, 2]}  # wrong images of 2 per severity
    for c, per_sev in wrong.items():
        for s, n_wrong in enumerate(per_sev, start=1):
            for k in range(2):
                write_image(tmp_path / c / str(s) / wnid / f"{k}.JPEG", img_id)
                table[img_id] = logits(c4=1.0) if k >= n_wrong else logits(c5=1.0)
                img_id += 1
    details: dict = {}
    res = run(LUTModel(table), ["imagenet_c"], {"imagenet_c": tmp_path},
              set_options={"corruptions": ("gaussian_noise", "fog")}, details=details)
    ce_g, ce_f = 100 * 0.6 / 0.886428, 100 * 0.4 / 0.819324
    assert res["imagenet_c_mce"] == pytest.approx((ce_g + ce_f) / 2)
    assert details["imagenet_c"]["errors"]["fog"] == pytest.approx([0, 0, 0.5, 0.5, 1.0])


def test_missing_root_errors_name_set_path_and_expectation(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ShiftDataError, match=rf"imagenet_r: {missing} does not exist .*expected one folder per wnid"):
        build_shift_set("imagenet_r", missing)
    with pytest.raises(ShiftDataError, match=r"objectnet: .*nowhere does not exist.*images/ and mappings/"):
        build_shift_set("objectnet", missing)
    with pytest.raises(ShiftDataError, match="imagenet_sketch: no root given"):
        evaluate_shift(LUTModel({}), ["imagenet_sketch"], {})
    with pytest.raises(ShiftDataError, match="unknown shift set 'imagenet_x'"):
        build_shift_set("imagenet_x", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShiftDataError, match="imagenet_v2: .*empty has no class folders"):
        build_shift_set("imagenet_v2", tmp_path / "empty")


def test_builtin_variants_use_the_same_path(monkeypatch):
    made = []

    class FakeBuiltinShapes(torch.utils.data.Dataset):
        def __init__(self, split, size, img_size, seed, family="main", variant="clean", severity=3):
            made.append((split, size, img_size, seed, family, variant, severity))
            self.n = size

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            img = torch.zeros(3, 8, 8, dtype=torch.uint8)
            img[0] = 10 * (i + 1)
            return img, i % 3

    fake = types.ModuleType("canbench.data.builtin")
    fake.BuiltinShapes = FakeBuiltinShapes
    monkeypatch.setitem(sys.modules, "canbench.data.builtin", fake)
    table = {1: logits(c0=1.0), 2: logits(c1=1.0), 3: logits(c0=1.0), 4: logits(c0=1.0)}
    res = run(LUTModel(table), ["builtin", "builtin_rendition"], {}, set_options={"builtin_size": 4})
    assert res == {"builtin": 75.0, "builtin_rendition": 75.0}
    assert [m[5] for m in made] == ["clean", "rendition"] and made[0][2] == SIZE


def test_real_builtin_shapes_sets_if_available():
    pytest.importorskip("canbench.data.builtin")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    details: dict = {}
    res = evaluate_shift(model, ["builtin", "builtin_noise_blur", "builtin_occlusion"], {}, img_size=16,
                         crop_pct=1.0, batch_size=4, set_options={"builtin_size": 6}, details=details)
    assert set(res) == {"builtin", "builtin_noise_blur", "builtin_occlusion"}
    assert all(0.0 <= v <= 100.0 for v in res.values())
    assert details["builtin_noise_blur"]["n"] == 6 and details["builtin"]["split"] == "test"
