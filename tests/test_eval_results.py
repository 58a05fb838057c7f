"""Result files: atomic layout, fingerprint fields, skip-if-done semantics."""

from __future__ import annotations

import hashlib
import json

import pytest

from canbench.evaluation.results import (
    checkpoint_info,
    is_done,
    make_fingerprint,
    read_result,
    result_path,
    suite_fingerprint_fields,
    why_not_done,
    write_result,
)


def fields(**over):
    base = dict(pooling="avg", head_bn=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), img_size=224,
                resize_crop="resize256_bicubic_center224", effective_batch=16384, lr_scaling="base_lr*batch/256",
                epochs=100, metric="last_epoch", class_subset_rule="none", seeds=[0])
    base.update(over)
    return suite_fingerprint_fields(**base)


def test_fingerprint_has_protocol_and_environment_fields():
    fp = make_fingerprint(fields(extra={"mode": "cached_features"}))
    for key in ("pooling", "head_bn", "norm_mean", "norm_std", "img_size", "resize_crop", "sampler_padding",
                "effective_batch", "lr_scaling", "epochs", "metric", "class_subset_rule", "seeds", "mode",
                "code_version", "torch", "timm", "torchvision", "device_type", "device_count"):
        assert key in fp, key
    assert fp["sampler_padding"] == "none"
    with pytest.raises(ValueError, match="extra fingerprint field 'pooling' would overwrite"):
        fields(extra={"pooling": "cls"})


def test_write_read_and_is_done(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"weights")
    info = checkpoint_info(ckpt, step=100)
    assert info["sha256"] == hashlib.sha256(b"weights").hexdigest() and info["step"] == 100
    fp = make_fingerprint(fields())
    assert not is_done(tmp_path, "linear", fp)
    path = write_result(tmp_path, "linear", {"top1": 68.9, "top1_best": 69.1}, fp, info)
    assert path == result_path(tmp_path, "linear") == tmp_path / "eval" / "linear.json"
    rec = json.loads(path.read_text())
    assert set(rec) == {"suite", "metrics", "fingerprint", "checkpoint", "created"}
    assert rec["checkpoint"] == {"path": str(ckpt.resolve()), "sha256": info["sha256"], "step": 100}
    assert read_result(tmp_path, "linear")["metrics"]["top1"] == 68.9
    assert not list((tmp_path / "eval").glob("*.tmp"))  # atomic write leaves no temp file
    # tuples in the fresh fingerprint vs lists in the stored JSON still compare equal
    assert is_done(tmp_path, "linear", make_fingerprint(fields()), info)
    other = make_fingerprint(fields(epochs=90))
    assert not is_done(tmp_path, "linear", other)
    assert "epochs (stored 100, now 90)" in why_not_done(tmp_path, "linear", other)
    ckpt.write_bytes(b"new weights")
    assert "checkpoint differs" in why_not_done(tmp_path, "linear", fp, checkpoint_info(ckpt, 200))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="suite name '../x'"):
        result_path(tmp_path, "../x")
    with pytest.raises(ValueError, match=r"lacks keys \['sha256', 'step'\]"):
        write_result(tmp_path, "knn", {}, {}, {"path": None})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "knn.json").write_text("{not json")
    with pytest.raises(ValueError, match="knn.json is not valid JSON"):
        read_result(tmp_path, "knn")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoint_info(tmp_path / "missing.pt")
