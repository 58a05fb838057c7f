"""Grid specs: expansion (product, zip, union, seeds), deterministic run ids, errors that name run and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from canbench.config import ConfigError
from canbench.data.datasets import DATASETS
from canbench.slurm.grid import GridError, expand, expand_all, load_spec, parse_spec, run_id_of, split_overrides

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "grids"
SPECS = sorted([BENCH / "smoke.yaml", *(BENCH / "paper").glob("*.yaml")])


def spec_dict(**kw) -> dict:
    d = {"name": "t", "benchmark": "fig6", "methods": ["can", "simclr"],
         "axes": {"method.mask_ratio": [0.25, 0.5]}, "seeds": [0, 1],
         "names": {"method.mask_ratio": "mask"},
         "scales": {"smoke": {"preset": "smoke", "overrides": {"optim.max_steps": 2}}}}
    d.update(kw)
    return d


def test_product_times_methods_times_seeds():
    runs = expand(parse_spec(spec_dict()), "smoke")
    assert [r.name for r in runs] == ["can-mask0.25-s0", "can-mask0.25-s1", "can-mask0.5-s0", "can-mask0.5-s1",
                                      "simclr-mask0.25-s0", "simclr-mask0.25-s1", "simclr-mask0.5-s0",
                                      "simclr-mask0.5-s1"]
    r = runs[3]
    assert r.cfg.method.mask_ratio == 0.5 and r.cfg.train.seed == 1 and r.cfg.optim.max_steps == 2
    extra = r.cfg.extra
    assert extra.benchmark == "fig6" and extra.grid == "t" and extra.scale == "smoke"
    assert extra.run_name == "can-mask0.5-s1" and extra.run_id == r.run_id
    assert extra.axes == {"method.mask_ratio": 0.5}


def test_zip_group_pairs_values_and_product_of_groups():
    d = spec_dict(methods=["can"], seeds=[0], names={}, axes=[
        {"zip": {"variant": ["AN", "CN"], "method.l_nce": [0.0, 0.03], "method.lam": [0.7, 0.0]}},
        {"product": {"method.mask_ratio": [0.25, 0.5]}}])
    runs = expand(parse_spec(d), "smoke")
    assert [r.name for r in runs] == ["can-AN-mask_ratio0.25-s0", "can-AN-mask_ratio0.5-s0",
                                      "can-CN-mask_ratio0.25-s0", "can-CN-mask_ratio0.5-s0"]
    cells = [(r.cfg.method.l_nce, r.cfg.method.lam, r.cfg.method.mask_ratio) for r in runs]
    assert cells == [(0.0, 0.7, 0.25), (0.0, 0.7, 0.5), (0.03, 0.0, 0.25), (0.03, 0.0, 0.5)]


def test_variant_names_the_run_alone():
    d = spec_dict(methods=["can"], seeds=[0], names={}, axes=[
        {"zip": {"variant": ["AN", "CN"], "method.l_nce": [0.0, 0.03], "method.lam": [0.7, 0.0]}}])
    runs = expand(parse_spec(d), "smoke")
    assert [r.name for r in runs] == ["can-AN-s0", "can-CN-s0"]
    assert runs[1].cfg.extra.axes == {"variant": "CN", "method.l_nce": 0.03, "method.lam": 0.0}


def test_zip_lengths_must_match():
    with pytest.raises(GridError, match=r"zip: all lists must have the same length"):
        parse_spec(spec_dict(axes=[{"zip": {"method.l_nce": [0.0, 0.1], "method.lam": [0.5]}}]))


def test_union_dedups_shared_point_and_records_all_axes():
    d = spec_dict(methods=["can"], seeds=[0], names={}, axes=[{"union": [
        {"product": {"method.l_nce": [0.0, 0.03]}},
        {"product": {"method.lam": [0.5, 0.7]}}]}])
    runs = expand(parse_spec(d), "smoke")
    # l_nce=0.03 and lam=0.7 are both the default point: trained once
    assert [r.name for r in runs] == ["can-l_nce0-s0", "can-l_nce0.03-s0", "can-lam0.5-s0"]
    assert runs[2].cfg.extra.axes == {"method.lam": 0.5, "method.l_nce": 0.03}


def test_method_and_preset_axes_with_aliases_and_scaled_values():
    d = spec_dict(methods=None, seeds=[0], names={"optim.epochs": "ep"},
                  axes=[{"zip": {"method": ["can", "mae"], "preset": ["b", "l"], "optim.epochs": [800, 1600]}}],
                  scales={"smoke": {"presets": {"b": "smoke", "l": {"preset": "smoke",
                                                                    "overrides": {"model.decoder_depth": 1}}},
                                    "axis_values": {"optim.epochs": [1, 2]}}})
    d.pop("methods")
    runs = expand(parse_spec(d), "smoke")
    assert [r.name for r in runs] == ["can-b-ep800-s0", "mae-l-ep1600-s0"]
    assert runs[1].cfg.method.name == "mae" and runs[1].cfg.model.decoder_depth == 1
    assert runs[1].cfg.optim.epochs == 2.0
    assert runs[1].cfg.extra.axes["optim.epochs"] == 1600  # the paper's cell
    assert runs[1].cfg.extra.axes_scaled == {"optim.epochs": 2}


def test_run_ids_are_deterministic_and_config_sensitive():
    a = expand(parse_spec(spec_dict()), "smoke")
    b = expand(parse_spec(spec_dict()), "smoke")
    assert [r.run_id for r in a] == [r.run_id for r in b]
    assert len({r.run_id for r in a}) == len(a)
    assert all(len(r.run_id) == 10 and r.folder_name.endswith(r.run_id) for r in a)
    assert run_id_of(a[0].cfg.to_dict()) == a[0].run_id  # the stored id is excluded from its own hash
    c = expand(parse_spec(spec_dict()), "smoke", overrides=["optim.max_steps=3"])
    assert {r.run_id for r in c}.isdisjoint({r.run_id for r in a})


def test_bad_axis_key_rejected_naming_the_key():
    with pytest.raises(GridError, match=r"run 'can-mask_rate0.5-s0': unknown config key 'method\.mask_rate'"
                                        r".*mask_ratio"):
        expand(parse_spec(spec_dict(axes={"method.mask_rate": [0.5]}, names={})), "smoke")
    with pytest.raises(GridError, match=r"run 'can-lr0.5-s0': unknown axis key 'optimm\.lr'"):
        expand(parse_spec(spec_dict(axes={"optimm.lr": [0.5]}, names={})), "smoke")


def test_bad_combination_rejected_naming_run_and_key():
    # sigma_max=0 with noise_mode full is invalid for CAN: the error names the run and the key
    d = spec_dict(methods=["can"], axes={"method.sigma_max": [0.05, 0.0]}, names={})
    with pytest.raises(GridError, match=r"run 'can-sigma_max0-s0'.*method\.noise_mode"):
        expand(parse_spec(d), "smoke")


def test_every_scale_is_validated_before_submission(tmp_path):
    d = spec_dict(scales={"smoke": {"preset": "smoke"},
                          "small": {"preset": "smoke", "overrides": {"optim.batch_size": 1}}})
    with pytest.raises(GridError, match=r"scale 'small', run 'can-mask0.25-s0'.*batch_size"):
        expand_all(parse_spec(d), "smoke")


def image_root(tmp_path):
    """A folder with the ImageFolder layout the paper presets' data.root must hold (checked before any run)."""
    (tmp_path / "train" / "n01440764").mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_data_root_checked_only_for_the_submitted_scale(tmp_path):
    d = spec_dict(scales={"smoke": {"preset": "smoke"}, "paper": {"preset": "vit_b_in1k"}})
    assert len(expand_all(parse_spec(d), "smoke")) == 8  # paper's missing data root is not smoke's problem
    with pytest.raises(GridError, match=r"run 'can-mask0.25-s0'.*data\.root"):
        expand_all(parse_spec(d), "paper")
    with pytest.raises(GridError, match=r"data\.root=.*does not hold data set 'imagefolder'"):
        expand_all(parse_spec(d), "paper", overrides=[f"data.root={tmp_path}"])  # an empty folder
    assert len(expand_all(parse_spec(d), "paper", overrides=[f"data.root={image_root(tmp_path)}"])) == 8


def test_world_size_is_validated():
    with pytest.raises(GridError, match=r"batch_size=64 is not divisible"):
        expand(parse_spec(spec_dict()), "smoke", world_size=3)


@pytest.mark.parametrize("bad,match", [
    ({"benchmark": "table9"}, r"benchmark='table9'"),
    ({"methods": ["cann"]}, r"unknown method 'cann'.*can"),
    ({"suites": ["linea"]}, r"unknown evaluation suite 'linea'.*linear"),
    ({"seeds": [0, 0]}, r"seeds must be distinct"),
    ({"extra_key": 1}, r"unknown key 'extra_key'"),
    ({"scales": {"smoke": {"preset": "smoke", "resources": {"gpus": 1}}}}, r"unknown resource 'gpus'"),
    ({"scales": {"smoke": {"preset": "smoke", "resources": {"nodes": "2"}}}}, r"nodes: expected int, got .2."),
    ({"scales": {"huge": {"preset": "smoke"}}}, r"unknown key 'huge'"),
])
def test_structural_errors(bad, match):
    with pytest.raises(GridError, match=match):
        parse_spec(spec_dict(**bad))


def test_set_overrides_split_into_config_and_resources():
    cfg, res = split_overrides(["optim.max_steps=6", "slurm.partition=gpu", "slurm.tasks_per_node=2",
                                "resources.account=proj"])
    assert cfg == ["optim.max_steps=6"]
    assert res == {"partition": "gpu", "tasks_per_node": 2, "account": "proj"}
    spec = parse_spec(spec_dict())
    r = spec.resources("smoke", res)
    assert r.partition == "gpu" and r.tasks_per_node == 2 and r.world_size == 2
    with pytest.raises(ConfigError, match=r"overrides an axis"):
        expand(spec, "smoke", overrides=["method.mask_ratio=0.1"])


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_expand_at_every_scale(path, tmp_path):
    spec = load_spec(path)
    assert set(spec.scales) == {"smoke", "small", "paper"}
    raw = yaml.safe_load(path.read_text())
    assert raw["name"] == spec.name
    for scale in spec.scales:
        res = spec.resources(scale)
        # a data root only where the runs read one (a generated data set given a root is an error)
        needs_root = any(DATASETS[r.cfg.data.dataset].needs_root
                         for r in expand(spec, scale, world_size=res.world_size, check_paths=False))
        runs = expand_all(spec, scale, overrides=[f"data.root={image_root(tmp_path)}"] if needs_root else None,
                          world_size=res.world_size)
        assert runs, scale
        for r in runs:
            for key in ("benchmark", "grid", "run_name", "run_id", "scale", "axes"):
                assert getattr(r.cfg.extra, key) is not None, (path.name, scale, key)


def test_paper_specs_match_the_paper_cells():
    runs = {r.name: r for r in expand(load_spec(BENCH / "paper" / "table5_ablation.yaml"), "smoke")}
    assert set(runs) == {"can-AN-s0", "can-CN-s0", "can-CA-s0", "can-CAN-s0"}
    assert runs["can-AN-s0"].cfg.method.l_nce == 0.0
    assert runs["can-CN-s0"].cfg.method.lam == 0.0
    assert runs["can-CA-s0"].cfg.method.noise_mode == "none"
    t4 = expand(load_spec(BENCH / "paper" / "table4_losses.yaml"), "smoke")
    assert {(r.method, r.cfg.method.mask_ratio) for r in t4} == {("can", 0.5), ("simclr", 0.5), ("mae", 0.5)}
    t1 = expand(load_spec(BENCH / "paper" / "table1_noise.yaml"), "smoke")
    assert [r.cfg.method.noise_mode for r in t1] == ["none", "augment_only", "loss_without_sigma_embedding", "full"]
    t2 = expand_all(load_spec(BENCH / "paper" / "table2_jft.yaml"), "paper", overrides=["data.root=/"])
    cells = {(r.method, r.cfg.model.arch, r.cfg.optim.epochs) for r in t2}
    assert ("can", "vit_large", 5000.0) in cells and ("mae", "vit_large", 1600.0) in cells
    assert all(r.cfg.optim.epoch_unit == "imagenet" for r in t2)
    smoke = expand(load_spec(BENCH / "smoke.yaml"), "smoke")
    assert len(smoke) == 6 and {r.method for r in smoke} == {"can", "simclr", "mae"}


def test_suite_seeds_limit_suites_per_seed():
    d = spec_dict(methods=["can"], suites=["knn", "finetune", "shift"], suite_seeds={"finetune": [1], "shift": [1]},
                  axes={"method.mask_ratio": [0.5]})
    runs = expand(parse_spec(d), "smoke")
    assert {r.seed: r.suites for r in runs} == {0: ["knn"], 1: ["knn", "finetune", "shift"]}
    assert {r.seed: r.cfg.extra.suites for r in runs} == {0: ["knn"], 1: ["knn", "finetune", "shift"]}
    # a scale profile's suite_seeds replaces the spec's
    d["scales"]["smoke"]["suite_seeds"] = {"finetune": [0]}
    runs = expand(parse_spec(d), "smoke")
    assert {r.seed: r.suites for r in runs} == {0: ["knn", "finetune", "shift"], 1: ["knn", "shift"]}


@pytest.mark.parametrize("bad, match", [
    ({"suite_seeds": {"linear": [0]}}, r"suite_seeds: 'linear' is not one of the grid's suites"),
    ({"suite_seeds": {"knn": [5]}}, r"suite_seeds.knn: seeds \[5\] are not among the grid's seeds"),
    ({"suite_seeds": ["knn"]}, r"suite_seeds must map suite names to lists of seeds"),
])
def test_suite_seeds_errors_name_the_key(bad, match):
    with pytest.raises(GridError, match=match):
        parse_spec(spec_dict(suites=["knn"], **bad))


def test_set_eval_overrides_are_evaluation_settings_validated_before_submitting(tmp_path):
    spec = load_spec(BENCH / "smoke.yaml")
    runs = expand(spec, "smoke", overrides=["eval.linear.epochs=3", f"eval.data.root={tmp_path}",
                                            "eval.data.dataset=imagefolder"])
    ev = runs[0].cfg.extra.eval
    assert ev["linear"] == {"epochs": 3} and ev["data"] == {"root": str(tmp_path), "dataset": "imagefolder"}
    with pytest.raises(GridError, match=r"eval: .*data\.root.*/nowhere/imagenet"):  # checked before anything trains
        expand(spec, "smoke", overrides=[f"eval.data.root={tmp_path / 'nowhere' / 'imagenet'}",
                                         "eval.data.dataset=imagefolder"])
    # a root for the built-in evaluation data would be ignored: refused, naming the key to set
    with pytest.raises(GridError, match=r"data\.root=.* 'builtin' .*set eval\.data\.dataset=imagefolder"):
        expand(spec, "smoke", overrides=[f"eval.data.root={tmp_path}"])
    assert ev["finetune"] == {"epochs": 1, "warmup_epochs": 0.1}  # the spec's own evaluation settings are kept
    with pytest.raises(GridError, match=r"eval: unknown evaluation setting 'linear.epoch'"):
        expand(spec, "smoke", overrides=["eval.linear.epoch=3"])
    with pytest.raises(GridError, match=r"--set extra.eval.x: the run record \(extra\) is written by the grid"):
        expand(spec, "smoke", overrides=["extra.eval.x=1"])
