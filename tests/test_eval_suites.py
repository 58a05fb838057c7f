"""``canbench.evaluation`` runner / recipes / splits / source: settings layering and validation, scale
choice, data planning (built-in and IN-1K layouts), public-checkpoint shapes, and ``run_suites`` as the grid
launcher calls it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from canbench.config import ConfigError
from canbench.evaluation import context, external, runner, source, splits, suites
from canbench.evaluation import recipes as P
from canbench.evaluation.presets import resolve_preset
from canbench.train.recipe import build_config, scale_of

TINY_PRETRAIN = ["model.img_size=16", "model.patch_size=4", "model.decoder_dim=32", "model.decoder_depth=1",
                 "model.decoder_heads=2", "model.proj_hidden=64", "data.builtin_size=64", "optim.batch_size=8",
                 "optim.max_steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from canbench.train.trainer import pretrain

    out = tmp_path_factory.mktemp("suites") / "run"
    # extra.eval: evaluation settings carried by the run config (how a grid spec passes them)
    cfg = build_config("mae", "smoke", TINY_PRETRAIN + ["extra.eval.data.test_size=30", "extra.eval.knn.k=3"])
    pretrain(cfg, out)
    return out


# ---- settings ---------------------------------------------------------------------------------------
def test_settings_layering_and_unknown_keys():
    s = P.build_settings("smoke", {"knn": {"k": 5}}, P.parse_overrides(["knn.k=7", "fewshot.roots.dtd=/d"]))
    assert s.knn.k == 7 and s.knn.temperature == 0.07 and s.fewshot.roots == {"dtd": "/d"}
    assert s.linear["protocol"] == "smoke" and P.build_settings("mae").finetune["protocol"] == "mae"
    for bad, name in (("linear.epochz=3", "linear.epochz"), ("finetune.lrr=1", "finetune.lrr"),
                      ("knn.kk=1", "knn.kk"), ("data.rot=/x", "data.rot"), ("lineat.epochs=1", "lineat")):
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            P.parse_overrides([bad])
    with pytest.raises(ConfigError, match="knn.k: expected int"):
        P.parse_overrides(["knn.k=abc"])
    with pytest.raises(ConfigError, match="fewshot.head='svm' is not one of"):
        P.parse_overrides(["fewshot.head=svm"])
    with pytest.raises(ConfigError, match="fewshot.shots: expected a list"):
        P.parse_overrides(["fewshot.shots=5"])
    assert P.recipe_fingerprint("knn", {"k": 3, "batch_size": 9, "num_workers": 2}) == {"k": 3}
    assert P.recipe_fingerprint("linear", {"batch_size": 9, "eval_batch_size": 4}) == {"batch_size": 9}


def test_preset_resolution(tmp_path):
    assert resolve_preset("smoke").profile == "smoke" and resolve_preset("mae").scale == "paper"
    pre = resolve_preset("vit_b_in1k")  # a pretraining preset: its scale, model and data sections
    assert pre.scale == "paper" and pre.model["arch"] == "vit_base" and pre.data["dataset"] == "imagefolder"
    f = tmp_path / "my_eval.yaml"
    f.write_text("scale: small\nlinear: {epochs: 10}\nfewshot: {datasets: [digits]}\n")
    pre = resolve_preset(str(f))
    assert pre.profile == "small" and pre.settings == {"linear": {"epochs": 10}, "fewshot": {"datasets": ["digits"]}}
    f.write_text("scale: small\nlinear: {epochz: 10}\n")
    with pytest.raises(ConfigError, match="linear.epochz"):
        resolve_preset(str(f))
    with pytest.raises(ConfigError, match="not an evaluation profile"):
        resolve_preset("no_such_preset")


def test_expand_suites_and_scale_of():
    assert runner.expand_suites(["all"]) == ["knn", "linear", "fewshot", "finetune", "shift"]
    assert runner.expand_suites(["linear", "knn", "linear"]) == ["linear", "knn"]
    with pytest.raises(ConfigError, match="unknown evaluation suite 'lin'"):
        runner.expand_suites(["lin"])
    assert scale_of(build_config("can", "smoke"))[0] == "smoke"
    assert scale_of(build_config("can", "small"))[0] == "small"
    assert scale_of(build_config("can", "vit_b_in1k", validate_paths=False))[0] == "paper"
    assert scale_of(build_config("can", None, ["extra.scale=small"]))[0] == "small"
    assert scale_of(build_config("can", None))[0] == "smoke"  # vit_micro on built-in data, no preset
    assert scale_of(None)[0] == "paper"  # public checkpoints


# ---- data planning ----------------------------------------------------------------------------------
def _image_tree(root: Path, classes=("n01440764", "n01443537"), per_class=3) -> None:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 20), (40 * i, 100, 200)).save(root / c / f"{i}.png")


def test_imagenet_layouts(tmp_path):
    _image_tree(tmp_path / "in" / "train")
    _image_tree(tmp_path / "in" / "val")
    for root in (tmp_path / "in", tmp_path / "in" / "train"):  # <root>/{train,val} or root=.../train
        train, val = splits.imagenet_specs("imagefolder", str(root), None)
        assert (train.label, train.split, val.split) == ("imagenet", "train", "val")
        assert Path(train.root) == Path(val.root) == tmp_path / "in"
        assert len(train.build(16)) == 6 and len(val.build(16)) == 6
    _image_tree(tmp_path / "other" / "train")
    with pytest.raises(ConfigError, match="no val folder"):
        splits.imagenet_specs("imagefolder", str(tmp_path / "other"), None)
    _, val = splits.imagenet_specs("imagefolder", str(tmp_path / "other"), str(tmp_path / "in" / "val"))
    assert Path(val.root) == tmp_path / "in" / "val"
    with pytest.raises(ConfigError, match=r"data.root=/path"):
        splits.imagenet_specs("imagefolder", None, None)
    with pytest.raises(ConfigError, match="does not exist"):
        splits.imagenet_specs("imagefolder", str(tmp_path / "missing"), None)
    with pytest.raises(ConfigError, match="meta.bin"):  # torchvision ImageNet layout needs its devkit meta
        splits.imagenet_specs("imagenet", str(tmp_path / "in"), None)


def test_external_model_shape_is_read_from_the_weights():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=4, num_classes=0,
                            class_token=True, fc_norm=False)
    cfg = external.external_model_config(vit.state_dict(), {"pool": "avg"})
    assert (cfg.arch, cfg.img_size, cfg.patch_size, cfg.class_token) == ("vit_micro", 16, 4, True)
    cfg = external.external_model_config(vit.state_dict(), {"pool": "avg", "class_token": False})
    assert cfg.class_token is False
    with pytest.raises(ConfigError, match="vit_small is width 384"):
        external.external_model_config(vit.state_dict(), {"pool": "avg"}, arch="vit_small")


def test_imagenet_family_plans_check_every_root_first(tmp_path):
    """A public checkpoint evaluated on an ImageFolder IN-1K: paper shift sets need their roots."""
    import timm

    _image_tree(tmp_path / "in" / "train")
    _image_tree(tmp_path / "in" / "val")
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=4, num_classes=0,
                            class_token=True, fc_norm=False)
    ckpt = tmp_path / "w.pth"
    torch.save({"model": vit.state_dict()}, ckpt)
    src = source.resolve_source(ckpt, fmt="timm")
    ctx = context.build_context(src, tmp_path / "out", overrides=[f"data.root={tmp_path / 'in'}",
                                                            "data.dataset=imagefolder"])
    assert (ctx.family, ctx.profile, ctx.img_size) == ("imagenet", "paper", 16)
    plan = suites.plan_linear(ctx)
    assert plan.plan_fields["dataset"] == "imagenet" and plan.plan_fields["eval_config"]["mode"] == "full"
    assert plan.plan_fields["eval_config"]["crop_pct"] == 0.875
    with pytest.raises(ConfigError, match="fewshot.datasets"):
        suites.plan_fewshot(ctx)
    # default paper shift sets: imagenet's root is the IN-1K val folder, the next one has none
    with pytest.raises(ConfigError, match=r"shift set 'imagenet_v2'.*shift\.roots\.imagenet_v2"):
        suites.plan_shift(ctx)
    # nothing ran
    with pytest.raises(ConfigError, match=r"shift set 'imagenet_v2'"):
        runner.evaluate(src, ["linear", "shift"], tmp_path / "out",
                   overrides=[f"data.root={tmp_path / 'in'}", "data.dataset=imagefolder"])
    assert not (tmp_path / "out").exists()


# ---- run_suites -------------------------------------------------------------------------------------
def test_run_suites_uses_extra_eval_and_skips_when_done(run_dir):
    res = runner.run_suites(run_dir, ["knn"], device="cpu")
    rec = res["knn"]
    assert rec["skipped"] is False and rec["fingerprint"]["k"] == 3  # extra.eval.knn.k from the run config
    assert rec["fingerprint"]["eval_data"]["test"]["size"] == 30
    stored = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert stored["metrics"]["top1"] == rec["metrics"]["top1"]
    assert runner.run_suites(run_dir, ["knn"], device="cpu")["knn"]["skipped"] is True
    # overrides beat extra.eval; a different setting is not "done"
    again = runner.run_suites(run_dir, ["knn"], overrides={"knn": {"k": 4}}, device="cpu")["knn"]
    assert again["skipped"] is False and again["fingerprint"]["k"] == 4
    assert runner.run_suites(run_dir, ["knn"], overrides={"knn": {"k": 4}}, force=True)["knn"]["skipped"] is False
    with pytest.raises(ConfigError, match="run folder"):
        runner.run_suites(run_dir / "eval", ["knn"])


def test_run_suites_rerun_when_checkpoint_changes(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    runner.run_suites(copy, ["knn"], device="cpu")
    assert runner.run_suites(copy, ["knn"], device="cpu")["knn"]["skipped"] is True
    ck = torch.load(copy / "checkpoints" / "last.pt", weights_only=True)
    ck["step"] = 3
    from canbench.io import torch_save_atomic

    torch_save_atomic(ck, copy / "checkpoints" / "last.pt")  # a new checkpoint, written the way the trainer does
    rec = runner.run_suites(copy, ["knn"], device="cpu")["knn"]
    assert rec["skipped"] is False and rec["checkpoint"]["step"] == 3


def test_fewshot_uses_the_shots_a_class_has_and_one_failing_set_loses_nothing(run_dir, tmp_path, monkeypatch):
    """More shots than a class has training images (Flowers102 has 10; the defaults go to 25) take what is there,
    as big_vision does, and record it; a data set that fails is recorded as failed, the others' results are kept,
    the call says so (exit 1 on the command line), and the next call reruns the suite."""
    import shutil

    from canbench.cli import main
    from canbench.evaluation import fewshot
    from canbench.reports.collect import collect

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    sets = ["fewshot.datasets=[builtin_heldout,digits]", "fewshot.train_size=40", "fewshot.shots=[1,8]",
            "fewshot.seeds=[0]"]
    real = fewshot.run_fewshot

    def flaky(*a, dataset=None, **k):
        if dataset == "digits":
            raise OSError("digits: disk went away")
        return real(*a, dataset=dataset, **k)

    monkeypatch.setattr(fewshot, "run_fewshot", flaky)
    with pytest.raises(runner.SuiteError, match="fewshot failed on digits .*disk went away"):
        runner.run_suites(copy, ["fewshot"], overrides=sets, device="cpu")
    stored = json.loads((copy / "eval" / "fewshot.json").read_text())
    kept = {(r["dataset"], r["shots"]): r for r in stored["metrics"]["results"]}
    assert set(kept) == {("builtin_heldout", 1), ("builtin_heldout", 8)}
    assert kept[("builtin_heldout", 8)]["actual_shots"] < 8 <= 40  # 40 images over 10 classes: fewer than 8 each
    assert kept[("builtin_heldout", 1)]["actual_shots"] == 1
    rows = collect(copy.parent).query("suite == 'fewshot'")
    failed = rows[rows.dataset == "digits"]
    assert len(failed) == 2 and failed.value.isna().all() and failed.error.str.contains("disk went away").all()
    assert main(["evaluate", "fewshot", "--checkpoint", str(copy), "--device", "cpu",
                 *[x for s in sets for x in ("--set", s)]]) == 1
    monkeypatch.setattr(fewshot, "run_fewshot", real)
    rec = runner.run_suites(copy, ["fewshot"], overrides=sets, device="cpu")["fewshot"]
    assert rec["skipped"] is False and "errors" not in rec["metrics"]


def test_results_of_a_replaced_checkpoint_are_stale_until_reevaluated(run_dir, tmp_path):
    """pretrain --force with another config into the same folder: the old eval/*.json belongs to the old
    checkpoint; report and check refuse it (stale, with the command that fixes it) and evaluate recomputes it."""
    import shutil

    from canbench.reports.collect import collect
    from canbench.train.trainer import pretrain

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    runner.run_suites(copy, ["knn"], device="cpu")
    assert collect(tmp_path).query("suite == 'knn'").error.isna().all()
    cfg = build_config("mae", "smoke", TINY_PRETRAIN + ["extra.eval.data.test_size=30", "extra.eval.knn.k=3",
                                                        "method.mask_ratio=0.5"])
    pretrain(cfg, copy, resume=False)  # what `canbench pretrain --force` does
    rows = collect(tmp_path).query("suite == 'knn'")
    assert rows.error.str.startswith("stale: made from checkpoint").all()
    assert rows.error.str.contains(f"rerun `canbench evaluate knn --checkpoint {copy}`").all()
    rec = runner.run_suites(copy, ["knn"], device="cpu")["knn"]
    assert rec["skipped"] is False and "checkpoint differs" not in str(rec)
    assert collect(tmp_path).query("suite == 'knn'").error.isna().all()
