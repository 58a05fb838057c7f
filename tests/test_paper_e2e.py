"""A paper preset end to end on a miniature ImageNet-layout tree (the identity expectation is injected, the rule is
the real one): the grid trains and evaluates through the debug executor, the runs record what they trained and were
evaluated on, and ``check --against paper`` compares the cell, finding only the keys shrunk for the CPU."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import yaml

from canbench.cli import main
from canbench.data import identity
from canbench.rundir import RunDir
from canbench.slurm.control import submit_grid
from canbench.slurm.spec import GRID_DIR, parse_spec

WNIDS = ("n01440764", "n01443537", "n01484850")
SIZES = {"train": 24, "val": 9}
SHRUNK = {  # the paper recipe's keys this test shrinks to fit a CPU: the only differences check may report
    "model.arch": "vit_micro", "model.img_size": 32, "model.patch_size": 4, "model.decoder_dim": 32,
    "model.decoder_depth": 1, "model.decoder_heads": 2, "model.proj_hidden": 64, "optim.batch_size": 8,
    "optim.max_steps": 2}


def _tree(root):
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        for c, w in enumerate(WNIDS):
            d = root / split / w
            d.mkdir(parents=True)
            for i in range(n // len(WNIDS)):
                a = (rng.random((40, 40, 3)) * 80).astype(np.uint8)
                a[..., c] += 150
                PIL.Image.fromarray(a).save(d / f"{w}_{i}.JPEG", quality=95)


@pytest.fixture
def mini_imagenet(tmp_path, monkeypatch):
    monkeypatch.setenv("CANBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(identity.EXPECTED, "imagenet-1k", identity.Expectation("imagenet-1k", WNIDS, SIZES))
    _tree(tmp_path / "imagenet")
    return tmp_path / "imagenet"


def test_paper_preset_end_to_end_compares_with_the_paper(mini_imagenet, tmp_path, capsys):
    raw = yaml.safe_load((GRID_DIR / "paper" / "table1_noise.yaml").read_text())
    raw["axes"] = {"product": {"method.noise_mode": ["full"]}}  # one of Table 1's four runs: enough, and cheaper
    spec = parse_spec(raw)
    sets = [f"data.root={mini_imagenet}", "data.num_workers=0", *(f"{k}={v}" for k, v in SHRUNK.items()),
            "eval.linear.batch_size=8"]  # the paper's 16384 exceeds the 24 images
    rep = submit_grid(spec, scale="paper", executor="debug", root=tmp_path / "runs", overrides=sets, wait=True)
    run = RunDir(tmp_path / "runs" / rep.runs[0].folder_name)
    assert run.state == "done"

    # what the run trained on, and its provenance
    summary = json.loads(run.summary_path.read_text())
    assert summary["data_identity"] == {"name": "imagenet-1k", "split": "train", "subset": False, "classes": 3,
                                        "images": 24}
    assert summary["empty_terms"] == {} and summary["loss_weights"]["rec"] == pytest.approx(0.97 * 0.7)
    prov = summary["provenance"]
    assert (prov["world_size"], prov["per_device_batch"], prov["accum_steps"], prov["total_batch"]) == (1, 8, 1, 8)
    assert prov["negatives_per_anchor"] == 14 and prov["checkpoint_step"] == 2 and "commit" in prov
    # what it was evaluated on
    res = json.loads(run.result_path("linear").read_text())
    data = res["fingerprint"]["eval_data"]
    assert data["train"]["identity"]["images"] == 24 and data["test"]["identity"] == {
        "name": "imagenet-1k", "split": "val", "subset": False, "classes": 3, "images": 9}

    assert main(["check", str(tmp_path / "runs"), "--against", "paper", "--benchmark", "table1", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    cell = next(c for c in doc["cells"] if c["variant"] == "full" and c["protocol"] == "linear")
    assert cell["verdict"] == "incomparable"
    assert "trained: commit" in cell["provenance"] and "world 1: 8/device x accum 1 = 8, 14 negatives, step 2" \
        in cell["provenance"] and "evaluated: commit" in cell["provenance"]
    named = {part.split(" ")[0] for part in cell["reason"].removeprefix("protocol differs: ").split("; ")}
    # exactly the shrunk keys (and the probe's batch and image size that follow them): nothing about the data
    assert named == {f"pretrain.{k}" for k in SHRUNK} | {"linear.batch_size", "linear.img_size"}
    assert not any("identity" in k for k in named)
    others = [c for c in doc["cells"] if c["table"] == "table1" and c["variant"] != "full"]
    assert {c["verdict"] for c in others} == {"missing"}


def test_a_subset_is_recorded_as_one_and_never_compares_with_the_paper(mini_imagenet, tmp_path):
    import shutil

    sub = tmp_path / "subset"
    shutil.copytree(mini_imagenet, sub)
    shutil.rmtree(sub / "train" / WNIDS[2])
    ident = identity.identify("imagefolder", sub, "train")
    assert ident["subset"] is True and ident["classes"] == 2 and ident["images"] == 16 and "class_digest" in ident
    assert identity.identify("imagefolder", mini_imagenet, "train") == identity.full_identity("imagenet-1k", "train")
    other = tmp_path / "other"
    (other / "train" / "cats").mkdir(parents=True)
    assert identity.identify("imagefolder", other, "train")["name"] == "imagefolder"
    assert identity.identify("jft", other, "train") == {"name": "jft-300m", "split": "train", "declared": True}


def test_the_listing_is_cached_and_recounted_only_where_it_changed(mini_imagenet, tmp_path, monkeypatch):
    folder = mini_imagenet / "train"
    first = identity.scan_split(folder)
    assert sum(first.values()) == 24 and list((tmp_path / "cache" / "identity").glob("*.json"))
    identity._MEMO.clear()  # a new process: served from the disk cache
    calls = []
    real = identity.os.scandir

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(identity.os, "scandir", counting)
    assert identity.scan_split(folder) == first and calls == [str(folder.resolve())]  # no class folder re-listed
    PIL.Image.new("RGB", (8, 8)).save(folder / WNIDS[0] / "extra.JPEG")
    identity._MEMO.clear()
    calls.clear()
    assert identity.scan_split(folder)[WNIDS[0]] == 9 and len(calls) == 2  # only the changed class is recounted
