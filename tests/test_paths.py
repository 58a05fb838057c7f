"""Wrong paths fail before any work, at every entry point: pretrain, each evaluation suite, grid plan / submit,
report and check. Each case goes through the command line and asserts exit code 2, a message that names the key
and the path, and that nothing was started (no run folder, result file or run store was created)."""

from __future__ import annotations

from pathlib import Path

import pytest

from canbench.cli import main
from canbench.train.recipe import build_config

TINY_PRETRAIN = ["model.img_size=16", "model.patch_size=4", "model.decoder_dim=32", "model.decoder_depth=1",
                 "model.decoder_heads=2", "model.proj_hidden=64", "data.builtin_size=64", "optim.batch_size=8",
                 "optim.max_steps=1", "train.count_flops=false"]


def sets(*items: str) -> list[str]:
    return sum([["--set", s] for s in items], [])


def fails(capsys, argv: list[str], *needles: str) -> str:
    """``canbench ARGV`` exits 2 and its error names every needle; returns the message."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("canbench: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run pretrained on the built-in data set (one step)."""
    from canbench.train.trainer import pretrain

    out = tmp_path_factory.mktemp("paths") / "can-smoke"
    pretrain(build_config("can", "smoke", TINY_PRETRAIN), out)
    return out


def eval_state(run: Path) -> list[str]:
    """Every result file and finetune output under the run folder (must not change on a refused call)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.parts[-2:-1] in (("eval",), ("finetune",)))


# ---- pretrain -----------------------------------------------------------------------------------


def test_pretrain_missing_root(tmp_path, capsys):
    out, missing = tmp_path / "run", tmp_path / "nowhere" / "imagenet"
    fails(capsys, ["pretrain", "can", "--preset", "smoke", "--out", str(out),
                   *sets("data.dataset=imagefolder", f"data.root={missing}")], "data.root", str(missing))
    assert not out.exists()


def test_pretrain_root_without_the_data_set(tmp_path, capsys):
    out, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()  # exists, but holds no class folders
    fails(capsys, ["pretrain", "can", "--preset", "smoke", "--out", str(out),
                   *sets("data.dataset=imagefolder", f"data.root={empty}")], "data.root", str(empty), "imagefolder")
    assert not out.exists()


def test_pretrain_root_for_generated_data_is_not_ignored(tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, ["pretrain", "can", "--preset", "smoke", "--out", str(out), *sets(f"data.root={tmp_path}")],
          f"data.root='{tmp_path}'", "data.dataset")
    assert not out.exists()


# ---- evaluate: every suite ----------------------------------------------------------------------


def test_finetune_paper_preset_with_missing_root_never_falls_back_to_the_builtin_data(run_dir, capsys):
    """The reported case: a run pretrained on the built-in set, the paper finetune preset and data.root=/missing
    used to start the 100-epoch finetune on the built-in data. Now refused, naming the key that would be read."""
    before = eval_state(run_dir)
    missing = run_dir.parent / "missing"
    fails(capsys, ["evaluate", "finetune", "--checkpoint", str(run_dir), "--preset", "vit_b_in1k",
                   *sets(f"data.root={missing}")], f"data.root={missing}", "'builtin'", "data.dataset=imagefolder")
    assert eval_state(run_dir) == before
    # with the data set named, the root itself is checked
    fails(capsys, ["evaluate", "finetune", "--checkpoint", str(run_dir), "--preset", "vit_b_in1k",
                   *sets("data.dataset=imagefolder", f"data.root={missing}")], "data.root", str(missing))
    assert eval_state(run_dir) == before


@pytest.mark.parametrize("suite", ["linear", "knn", "finetune", "all"])
def test_main_data_root_missing_or_empty(run_dir, tmp_path, capsys, suite):
    before = eval_state(run_dir)
    missing = tmp_path / "nowhere"
    fails(capsys, ["evaluate", suite, "--checkpoint", str(run_dir),
                   *sets("data.dataset=imagefolder", f"data.root={missing}")], "data.root", str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()  # no train/ and val/ folders
    fails(capsys, ["evaluate", suite, "--checkpoint", str(run_dir),
                   *sets("data.dataset=imagefolder", f"data.root={empty}")], str(empty / "train"))
    assert eval_state(run_dir) == before


def test_fewshot_root_missing_or_empty(run_dir, tmp_path, capsys):
    before = eval_state(run_dir)
    missing = tmp_path / "cifar"
    fails(capsys, ["evaluate", "fewshot", "--checkpoint", str(run_dir),
                   *sets("fewshot.datasets=[cifar10]", f"fewshot.roots.cifar10={missing}")],
          "fewshot.roots.cifar10", str(missing))
    missing.mkdir()  # exists, without the CIFAR batches
    fails(capsys, ["evaluate", "fewshot", "--checkpoint", str(run_dir),
                   *sets("fewshot.datasets=[cifar10]", f"fewshot.roots.cifar10={missing}")],
          "fewshot.roots.cifar10", str(missing))
    assert eval_state(run_dir) == before


def test_shift_root_missing_before_the_finetune_it_needs(run_dir, tmp_path, capsys):
    before = eval_state(run_dir)
    missing = tmp_path / "objectnet-1.0"
    fails(capsys, ["evaluate", "shift", "--checkpoint", str(run_dir),
                   *sets("shift.sets=[objectnet]", f"shift.roots.objectnet={missing}")],
          "shift.roots.objectnet", str(missing))
    assert eval_state(run_dir) == before  # the finetune shift needs first never started


def test_public_checkpoint_missing(tmp_path, capsys):
    missing = tmp_path / "mae_pretrain_vit_base.pth"
    fails(capsys, ["evaluate", "linear", "--checkpoint", str(missing), "--format", "mae", "--out",
                   str(tmp_path / "out")], str(missing))
    assert not (tmp_path / "out").exists()


# ---- grid plan / submit -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["plan", "submit"])
def test_grid_pretrain_root_missing(tmp_path, capsys, action):
    store, missing = tmp_path / "store", tmp_path / "imagenet"
    extra = ["--executor", "debug"] if action == "submit" else []
    fails(capsys, ["grid", action, "smoke", "--root", str(store), *extra,
                   *sets("data.dataset=imagefolder", f"data.root={missing}")], "data.root", str(missing))
    assert not store.exists()


@pytest.mark.parametrize("action", ["plan", "submit"])
def test_grid_eval_root_missing_or_ignored(tmp_path, capsys, action):
    store, missing = tmp_path / "store", tmp_path / "dtd"
    extra = ["--executor", "debug"] if action == "submit" else []
    fails(capsys, ["grid", action, "smoke", "--root", str(store), *extra,
                   *sets("eval.fewshot.datasets=[dtd]", f"eval.fewshot.roots.dtd={missing}")],
          "fewshot.roots.dtd", str(missing))
    # an evaluation root for the built-in evaluation data would be ignored: refused, naming the key to set
    fails(capsys, ["grid", action, "smoke", "--root", str(store), *extra, *sets(f"eval.data.root={tmp_path}")],
          "data.root", str(tmp_path), "eval.data.dataset")
    assert not store.exists()


# ---- report / check -----------------------------------------------------------------------------


def test_report_missing_runs_dir_or_baseline(tmp_path, capsys):
    out, missing = tmp_path / "report.pdf", tmp_path / "runs"
    fails(capsys, ["report", str(missing), "--out", str(out)], "RUNS_DIR", str(missing))
    (tmp_path / "store").mkdir()
    base = tmp_path / "baseline.csv"
    fails(capsys, ["report", str(tmp_path / "store"), "--against", str(base), "--out", str(out)], "--against",
          str(base))
    table = tmp_path / "flops.csv"
    fails(capsys, ["report", str(tmp_path / "store"), "--flops-table", str(table), "--out", str(out)],
          "--flops-table", str(table))
    assert not out.exists()


def test_check_missing_runs_dir_or_baseline(tmp_path, capsys):
    missing = tmp_path / "runs"
    fails(capsys, ["check", str(missing), "--against", "paper"], "RUNS_DIR", str(missing))
    (tmp_path / "store").mkdir()
    base = tmp_path / "baseline.csv"
    fails(capsys, ["check", str(tmp_path / "store"), "--against", str(base)], "--against", str(base))
    written = tmp_path / "new.csv"
    fails(capsys, ["check", str(tmp_path / "store"), "--against", str(base), "--write-baseline", str(written)],
          "--against", str(base))
    assert not written.exists()  # nothing written before the reference was found
