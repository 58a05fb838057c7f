"""Config loading, overrides and the errors that name keys and ranges."""

from __future__ import annotations

import pytest
import torch

from canbench.config import ConfigError, derived, overrides_to_dict
from canbench.train.recipe import build_config


def test_method_defaults_follow_the_paper():
    can = build_config("can", "smoke")
    assert (can.method.mask_ratio, can.method.l_nce, can.method.lam, can.method.sigma_max) == (0.5, 0.03, 0.7, 0.05)
    assert can.method.noise_mode == "full"
    assert build_config("simclr", "smoke").method.mask_ratio == 0.0
    assert build_config("mae", "smoke").method.mask_ratio == 0.75


def test_override_parses_yaml_values():
    d = overrides_to_dict(["method.mask_ratio=0.25", "optim.betas=[0.9, 0.99]", "train.compile=true"])
    assert d == {"method": {"mask_ratio": 0.25}, "optim": {"betas": [0.9, 0.99]}, "train": {"compile": True}}
    cfg = build_config("simclr", "smoke", ["method.mask_ratio=0.5", "optim.betas=[0.9, 0.99]"])
    assert cfg.method.mask_ratio == 0.5 and cfg.optim.betas == (0.9, 0.99)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"method\.mask_ration.*mask_ratio"):
        build_config("can", "smoke", ["method.mask_ration=0.3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optimm'.*optim"):
        build_config("can", "smoke", ["optimm.batch_size=3"])


@pytest.mark.parametrize("override,match", [
    ("method.mask_ratio=1.0", r"method\.mask_ratio=1\.0 is out of range: allowed \[0\.0, 1\.0\)"),
    ("method.mask_ratio=-0.1", r"method\.mask_ratio"),
    ("method.l_nce=1.5", r"method\.l_nce=1\.5 is out of range: allowed \[0\.0, 1\.0\]"),
    ("method.lam=-1", r"method\.lam"),
    ("method.sigma_max=-0.01", r"method\.sigma_max"),
    ("method.noise_mode=loud", r"method\.noise_mode='loud' is not one of"),
    ("optim.batch_size=63", r"contrastive|divisible"),
    ("optim.accum_steps=3", r"optim\.batch_size=64 is not divisible by accum_steps"),
    ("model.arch=vit_huge", r"model\.arch: unknown architecture 'vit_huge'"),
    ("optim.batch_size=abc", r"optim\.batch_size: expected int, got 'abc'"),
])
def test_out_of_range_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        cfg = build_config("can", "smoke", [override])
        if override.startswith("optim.batch_size=63"):
            from canbench.train.recipe import validate

            validate(cfg, world_size=2)


def test_batch_must_divide_by_world_size():
    from canbench.train.recipe import validate

    cfg = build_config("can", "smoke", ["optim.batch_size=66"])
    with pytest.raises(ConfigError, match=r"not divisible by accum_steps x world size = 1 x 4"):
        validate(cfg, world_size=4)


def test_missing_data_root_fails_before_training(tmp_path):
    missing = tmp_path / "imagenet"
    with pytest.raises(ConfigError, match=rf"data\.root='{missing}' does not exist"):
        build_config("mae", "vit_b_in1k", [f"data.root={missing}"])
    with pytest.raises(ConfigError, match=r"data\.root must be set"):
        build_config("mae", "vit_b_in1k")


def test_unknown_preset_and_method():
    with pytest.raises(ConfigError, match=r"unknown preset 'smok'.*smoke"):
        build_config("can", "smok")
    with pytest.raises(ConfigError, match=r"unknown method 'simclrr'"):
        build_config("simclrr", "smoke")


def test_derived_lr_and_imagenet_epochs():
    cfg = build_config("can", "vit_l_jft", validate_paths=False)
    info = derived(cfg, dataset_len=10_000)
    assert info.lr == pytest.approx(3.125e-5 * 4096 / 256)
    assert info.steps_per_epoch == 1_281_167 // 4096  # ImageNet-equivalent epoch, whatever the data size
    assert info.total_steps == 5000 * (1_281_167 // 4096)
    assert info.warmup_steps == 40 * (1_281_167 // 4096)
    cfg = build_config("can", "smoke", ["optim.epochs=2", "optim.warmup_epochs=0.5"])
    info = derived(cfg, dataset_len=640, world_size=2)
    assert (info.steps_per_epoch, info.total_steps, info.warmup_steps) == (10, 20, 5)
    assert info.per_rank_batch == 32


def test_builtin_data_version_is_recorded_and_enforced():
    from canbench.data.builtin import BUILTIN_VERSION

    cfg = build_config("can", "smoke")
    assert cfg.data.dataset == "builtin" and cfg.data.builtin_version == BUILTIN_VERSION
    assert build_config("can", "smoke", ["data.dataset=digits"]).data.builtin_version is None
    with pytest.raises(ConfigError, match=r"data.builtin_version=1: this checkout renders version"):
        build_config("can", "smoke", [f"data.builtin_version={BUILTIN_VERSION - 1}"])
    with pytest.raises(ConfigError, match=r"data.builtin_version=.* is set, but data.dataset='digits'"):
        build_config("can", "smoke", ["data.dataset=digits", f"data.builtin_version={BUILTIN_VERSION}"])
    # a run's recipe fingerprint carries the version; a config written before it existed reads "not recorded"
    from canbench.fingerprint import train_fingerprint

    d = cfg.to_dict()
    assert train_fingerprint(d)["data.builtin_version"] == BUILTIN_VERSION
    d["data"].pop("builtin_version")
    assert "data.builtin_version" in train_fingerprint(d) and train_fingerprint(d)["data.builtin_version"] is None


def test_exponent_floats_parse_as_numbers():
    from canbench.config import parse_override, yaml_numbers

    assert parse_override("finetune.base_lr=4e-4") == (["finetune", "base_lr"], 4e-4)
    assert parse_override("a=[1e-3, 2E2, x1e3]") == (["a"], [1e-3, 200.0, "x1e3"])
    assert parse_override("a=1.5e-3")[1] == 1.5e-3 and parse_override("a=7")[1] == 7
    assert yaml_numbers({"lin": {"lr": "5e-4", "name": "e5"}}) == {"lin": {"lr": 5e-4, "name": "e5"}}
    assert build_config("can", "smoke", ["optim.base_lr=4e-4"]).optim.base_lr == 4e-4


def test_train_compile_is_auto_true_or_false():
    from canbench.train.step import use_compile

    assert build_config("can", "smoke").train.compile == "auto"
    for given, stored in (("true", "true"), ("false", "false"), ("on", "true"), ("auto", "auto")):
        assert build_config("can", "smoke", [f"train.compile={given}"]).train.compile == stored
    with pytest.raises(ConfigError, match=r"train\.compile='fast' is not one of 'auto', 'true', 'false'"):
        build_config("can", "smoke", ["train.compile=fast"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # device objects only: no GPU needed
    auto = build_config("can", "smoke")
    assert (use_compile(auto, cpu), use_compile(auto, cuda)) == (False, True)
    off = build_config("can", "smoke", ["train.compile=false"])
    on = build_config("can", "smoke", ["train.compile=true"])
    assert (use_compile(off, cuda), use_compile(on, cpu)) == (False, True)


def test_probe_preset_is_smoke_with_longer_training_and_can_contrastive_weight():
    """The built-in benchmark's preset: the smoke model, 4,096 images x 4 epochs; only CAN's l_nce differs."""
    for m in ("can", "simclr", "mae"):
        smoke, probe = build_config(m, "smoke").to_dict(), build_config(m, "probe").to_dict()
        assert probe["model"] == smoke["model"]
        assert (probe["data"]["builtin_size"], probe["optim"]["epochs"]) == (4096, 4.0)
        assert derived(build_config(m, "probe"), 4096).total_steps == 256
        assert probe["method"] == {**smoke["method"], **({"l_nce": 0.3} if m == "can" else {})}
