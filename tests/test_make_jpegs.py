from __future__ import annotations

import hashlib

import PIL.Image
import pytest

from canbench.benchmarks.perf.make_jpegs import main, write_jpegs
from canbench.data.gpu_pipeline import imagefolder_files, jpeg_info


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_tree_is_imagefolder_deterministic_and_sized_like_imagenet(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_jpegs(a, 10, classes=3, workers=1)
    write_jpegs(b, 10, classes=3, workers=2)  # parallel writing gives the same files
    assert _digests(a) == _digests(b) and len(_digests(a)) == 10
    assert not list(a.rglob("*.tmp"))  # atomic writes leave no temp files
    files, labels = imagefolder_files(a, "train")
    assert len(files) == 10 and sorted(set(labels)) == [0, 1, 2]
    for f, y in zip(files, labels):
        idx = int(f.rsplit("img", 1)[1][:6])
        assert y == idx % 3  # class folder = index mod classes
        info = jpeg_info(open(f, "rb").read())
        with PIL.Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and (info.width, info.height) == im.size
            w, h = im.size
        assert {w, h} <= set(range(280, 501)) and max(w, h) >= 350


def test_bad_counts_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="images=0"):
        write_jpegs(tmp_path, 0)
    with pytest.raises(SystemExit, match="classes=0 must be >= 1"):
        main([str(tmp_path), "--images", "4", "--classes", "0"])
