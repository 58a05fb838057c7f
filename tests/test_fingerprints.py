"""Fingerprints come from the schema: every training and evaluation key is compared unless it is on the documented
neutral list, and changing any compared key makes a paper cell incomparable, naming the key, its value and the
paper's."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from canbench.config import Config, flatten
from canbench.evaluation import context, source, suites
from canbench.evaluation import recipes as R
from canbench.fingerprint import NEUTRAL_TRAIN_KEYS, PER_RUN_KEYS, RECIPE_SECTIONS, result_affecting_train_keys
from canbench.io import read_json, write_json
from canbench.reports.check import check
from canbench.reports.collect import collect
from canbench.reports.synthetic import write_paper_run
from canbench.train.recipe import build_config


def _schema_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf field of a config dataclass, dotted (nested dataclasses are walked)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += _schema_keys(t, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def training_schema() -> list[str]:
    hints = typing.get_type_hints(Config)
    return [k for s in RECIPE_SECTIONS for k in _schema_keys(hints[s], f"{s}.")]


def test_every_training_key_is_compared_or_declared_neutral():
    keys = training_schema()
    compared = set(result_affecting_train_keys())
    neutral = set(NEUTRAL_TRAIN_KEYS) | set(PER_RUN_KEYS)
    in_neither = [k for k in keys if k not in compared and k not in neutral]
    in_both = [k for k in keys if k in compared and k in neutral]
    assert not in_neither, f"config keys neither compared nor declared neutral: {in_neither}"
    assert not in_both, in_both
    assert neutral <= set(keys), f"neutral keys that are not config keys: {sorted(neutral - set(keys))}"
    assert all(len(reason) > 10 for reason in {**NEUTRAL_TRAIN_KEYS, **PER_RUN_KEYS}.values())
    # the schema's every section is walked: extra (the run record) is the only one left out, on purpose
    assert {f.name for f in dataclasses.fields(Config)} - set(RECIPE_SECTIONS) == {"extra"}


# ---- evaluation recipes ---------------------------------------------------------------------------------
EVAL_SCHEMA = {"linear": R.LinearProbeConfig, "finetune": R.FinetuneConfig, "knn": R.KnnSettings,
               "fewshot": R.FewshotSettings, "shift": R.ShiftSettings, "data": R.EvalData, "model": R.ExternalModel}


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> dict[str, dict]:
    """The eval_config each suite records, planned (not run) for a tiny canbench run."""
    from canbench.train.trainer import pretrain

    out = tmp_path_factory.mktemp("fp") / "run"
    cfg = build_config("can", "smoke", ["model.img_size=16", "model.patch_size=4", "model.decoder_dim=32",
                                        "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
                                        "data.builtin_size=512", "optim.batch_size=8", "optim.max_steps=1"])
    pretrain(cfg, out)
    ctx = context.build_context(source.resolve_source(out), out)
    (out / "finetune").mkdir(exist_ok=True)
    (out / "finetune" / "finetuned.pt").write_bytes(b"")  # shift plans against the finetuned classifier's path
    plans = {s: getattr(suites, f"plan_{s}")(ctx) for s in ("knn", "linear", "fewshot", "finetune", "shift")}
    return {s: p.plan_fields["eval_config"] for s, p in plans.items()}


@pytest.mark.parametrize("section", ["linear", "finetune", "knn", "fewshot", "shift"])
def test_every_evaluation_key_is_recorded_or_declared_neutral(planned, section):
    recorded = planned[section]
    neutral = R.NEUTRAL_EVAL_KEYS[section]
    for f in dataclasses.fields(EVAL_SCHEMA[section]):
        assert (f.name in recorded) != (f.name in neutral), \
            f"{section}.{f.name}: {'recorded and neutral' if f.name in recorded else 'neither recorded nor neutral'}"
    for sub in ("data", "model"):  # every suite records the data and model sections too
        for f in dataclasses.fields(EVAL_SCHEMA[sub]):
            assert (f.name in recorded[sub]) != (f.name in R.NEUTRAL_EVAL_KEYS[sub]), f"{section}: {sub}.{f.name}"
    assert set(neutral) <= {f.name for f in dataclasses.fields(EVAL_SCHEMA[section])}
    assert all(len(reason) > 10 for reason in neutral.values())


# ---- key mutation ---------------------------------------------------------------------------------------
def _mutate(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    return 1  # None


@pytest.fixture(scope="module")
def paper_cell(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mut")
    write_paper_run(root, "table1_noise", "can-noisefull", evals={"linear": {"top1": 68.9}})
    run = root / "can-noisefull-s0"
    assert _verdict(run)[0] == "pass"  # unmutated, it compares
    return run


def _verdict(run: Path) -> tuple[str, str]:
    c = check(collect(run.parent), "paper", benchmarks=["table1"]).cells
    cell = c[(c.variant == "full") & (c.protocol == "linear")].iloc[0]
    return cell["verdict"], cell["reason"]


POSITIONAL = {"method.name", "method.noise_mode"}  # Table 1's row (the method) and column (the noise mode)


@pytest.mark.parametrize("key", result_affecting_train_keys())
def test_each_training_key_changed_makes_the_paper_cell_incomparable(paper_cell, key):
    path = paper_cell / "config.yaml"
    text = path.read_text()
    cfg = yaml.safe_load(text)
    section, name = key.split(".", 1)
    old = cfg[section].get(name)
    cfg[section][name] = new = _mutate(old)
    path.write_text(yaml.safe_dump(cfg))
    try:
        verdict, reason = _verdict(paper_cell)
        moved = check(collect(paper_cell.parent), "paper", benchmarks=["table1"]).count("no reference")
    finally:
        path.write_text(text)
    if key in POSITIONAL:  # these keys place a run in the table: changed, the run is another cell
        assert verdict == "missing" and moved >= 1
        return
    assert verdict == "incomparable"
    shown = "none" if old is None else (str(old).lower() if isinstance(old, bool) else None)
    assert f"pretrain.{key} " in reason and (shown is None or f"(paper {shown})" in reason), reason
    assert reason.count(";") == 0, f"only {key} differs, yet: {reason}"
    assert new is not None


PAPER_LINEAR_KEYS = sorted(flatten(R.paper_recipe("linear")))


@pytest.mark.parametrize("key", PAPER_LINEAR_KEYS)
def test_each_linear_probe_key_changed_makes_the_paper_cell_incomparable(paper_cell, key):
    path = paper_cell / "eval" / "linear.json"
    saved = path.read_text()
    res = read_json(path)
    node = res["fingerprint"]["eval_config"]
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = _mutate(node[leaf])
    write_json(path, res)
    try:
        verdict, reason = _verdict(paper_cell)
    finally:
        path.write_text(saved)
    assert verdict == "incomparable" and reason.startswith(f"protocol differs: linear.{key} ") and ";" not in reason


@pytest.mark.parametrize("split,field,value", [("train", "images", 1_281_166), ("test", "subset", True),
                                               ("train", "name", "imagefolder")])
def test_evaluation_data_identity_changed_makes_the_paper_cell_incomparable(paper_cell, split, field, value):
    path = paper_cell / "eval" / "linear.json"
    saved = path.read_text()
    res = read_json(path)
    res["fingerprint"]["eval_data"][split]["identity"][field] = value
    write_json(path, res)
    try:
        verdict, reason = _verdict(paper_cell)
    finally:
        path.write_text(saved)
    assert verdict == "incomparable" and f"eval.data.{split}.identity.{field} " in reason


def test_docs_list_every_neutral_key():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text()
    for key in NEUTRAL_TRAIN_KEYS:
        assert f"`{key}`" in doc, f"docs/reports.md does not list the neutral training key {key}"
    for section, keys in R.NEUTRAL_EVAL_KEYS.items():
        for key in keys:
            assert f"`{section}.{key}`" in doc or (section == "data" and f"`data.{key}`" in doc), \
                f"docs/reports.md does not list the neutral evaluation key {section}.{key}"
