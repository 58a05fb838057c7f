"""Logging users expect: training and evaluation scalars go to TensorBoard and, when asked, Weights & Biases.

A fake TensorBoard writer and a fake ``wandb`` module (put in ``sys.modules``) stand in for the optional
packages, so these tests run with only ``.[test]`` installed; the test that reads real event files is skipped
without ``tensorboard``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from canbench.config import ConfigError
from canbench.evaluation import runner
from canbench.train import logger as L
from canbench.train.recipe import build_config

TINY = ["model.img_size=16", "model.patch_size=4", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=2", "model.proj_hidden=64", "data.builtin_size=64", "optim.batch_size=8",
        "optim.max_steps=3", "train.log_every=1", "train.count_flops=false",
        "extra.eval.data.test_size=30", "extra.eval.knn.k=3"]


class FakeWriter:
    """Records add_scalar calls like torch.utils.tensorboard.SummaryWriter would write them."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def writers(monkeypatch):
    made: list[FakeWriter] = []

    def fake(run):
        made.append(FakeWriter(str(run.tensorboard_dir)))
        return made[-1]

    monkeypatch.setattr(L, "_tensorboard", fake)
    return made


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording init / log / finish."""
    calls: dict = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step=None):
            calls["log"].append((dict(data), step))

        def finish(self):
            calls["finish"] += 1

    mod = types.ModuleType("wandb")

    def init(**kw):
        calls["init"].append(kw)
        return Run()

    mod.init = init
    monkeypatch.setitem(sys.modules, "wandb", mod)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return calls


def _pretrain(out: Path, extra: list[str] = ()) -> Path:
    from canbench.train.trainer import pretrain

    pretrain(build_config("mae", "smoke", TINY + list(extra)), out)
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_and_eval_scalars_reach_tensorboard(writers, tmp_path):
    run = _pretrain(tmp_path / "run")
    train = writers[0].scalars
    lines = _metrics(run)
    assert [s for t, _, s in train if t == "train/loss"] == [m["step"] for m in lines] == [1, 2, 3]
    assert [v for t, v, _ in train if t == "train/rec"] == pytest.approx([m["rec"] for m in lines])
    assert writers[0].closed and writers[0].log_dir == str(run / "tensorboard")

    res = runner.run_suites(run, ["knn"], device="cpu")["knn"]
    ev = writers[1].scalars
    assert ("eval/knn/top1", res["metrics"]["top1"], 3) in ev  # the checkpoint's step
    assert ("eval/knn/top5", res["metrics"]["top5"], 3) in ev and writers[1].closed
    # up-to-date suites are skipped and log nothing again
    runner.run_suites(run, ["knn"], device="cpu")
    assert len(writers) == 2


def test_scalars_of_per_set_results_are_named_by_set_and_shots():
    sent = L.Sinks().log({"results": [{"dataset": "digits", "shots": 5, "mean": 40.5, "std": 1.0},
                                      {"set": "builtin_occlusion", "top1": 12.0}],
                          "top1": 33.0, "ok": True, "bad": float("nan"), "sub": {"x": 2}}, 7, prefix="eval/s")
    assert sent == {"eval/s/results/digits_5shot/mean": 40.5, "eval/s/results/digits_5shot/std": 1.0,
                    "eval/s/results/builtin_occlusion/top1": 12.0, "eval/s/top1": 33.0, "eval/s/sub/x": 2.0}


def test_wandb_offline_by_default_and_receives_train_and_eval_metrics(writers, fake_wandb, tmp_path):
    run = _pretrain(tmp_path / "run", ["train.wandb=true", "extra.run_name=mae-s0", "extra.run_id=abc123"])
    init = fake_wandb["init"][0]
    assert init["mode"] == "offline" and init["dir"] == str(run / "wandb") and Path(init["dir"]).is_dir()
    assert init["name"] == "mae-s0" and init["id"] == "abc123" and init["config"]["train"]["wandb"] is True
    logged = {step: data for data, step in fake_wandb["log"]}
    assert logged[2]["train/loss"] == pytest.approx(_metrics(run)[1]["loss"])
    assert fake_wandb["finish"] == 1

    res = runner.run_suites(run, ["knn"], device="cpu")["knn"]
    data, step = fake_wandb["log"][-1]
    assert step == 3 and data["eval/knn/top1"] == res["metrics"]["top1"] and fake_wandb["finish"] == 2


def test_wandb_mode_set_by_the_user_is_kept(writers, fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    _pretrain(tmp_path / "run", ["train.wandb=true"])
    assert fake_wandb["init"][0]["mode"] == "online"


def test_wandb_off_by_default_and_missing_package_fails_before_work(writers, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    run = _pretrain(tmp_path / "run")  # train.wandb defaults to false: the package is never imported
    assert (run / "summary.json").is_file()
    with pytest.raises(ConfigError, match=r"train\.wandb .*pip install 'canbench\[wandb\]'"):
        _pretrain(tmp_path / "run2", ["train.wandb=true"])
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()
    cfg = json.loads(json.dumps(build_config("mae", "smoke", TINY).to_dict()))
    cfg["train"]["wandb"] = True
    with pytest.raises(ConfigError, match=r"train\.wandb"):
        L.check_sinks(cfg)


def test_real_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _pretrain(tmp_path / "run")
    top1 = runner.run_suites(run, ["knn"], device="cpu")["knn"]["metrics"]["top1"]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    ev = acc.Scalars("eval/knn/top1")
    assert [e.step for e in ev] == [3] and ev[0].value == pytest.approx(top1)
