"""The pretraining engine: exact resume, non-finite losses, checkpoints, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from canbench.config import ConfigError
from canbench.rundir import RunDir
from canbench.train import checkpoint
from canbench.train.recipe import build_config
from canbench.train.trainer import NonFiniteLossError, Trainer, pretrain


def _cfg(method: str, tiny: list[str], *extra: str):
    return build_config(method, "smoke", tiny + ["optim.max_steps=6", "optim.epochs=1", *extra])


@pytest.mark.parametrize("method,accum", [("can", 1), ("simclr", 1), ("mae", 1), ("can", 2), ("simclr", 2)])
def test_interrupted_and_resumed_run_is_bit_identical(method, accum, tiny_overrides, tmp_path):
    # drop path draws from the global torch RNG; accum 2 runs the gradient cache (two passes per micro-batch)
    cfg = _cfg(method, tiny_overrides, "model.drop_path=0.1", f"optim.accum_steps={accum}")
    full = tmp_path / "full"
    pretrain(cfg, full)
    part = tmp_path / "part"
    # stop after step 3 (what a preemption does); the last checkpoint is step 2 (ckpt_every=2), so the fresh
    # Trainer resumes from step 2 and logs step 3 again
    res = Trainer(cfg, part, stop=lambda t: t.step >= 3).fit(resume=True)
    assert res == {"state": "stopped", "step": 3}
    assert checkpoint.load(part)["step"] == 2
    assert RunDir(part).read_status()["state"] == "running"
    pretrain(cfg, part, resume=True)
    a = checkpoint.load(full)
    b = checkpoint.load(part)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for pid in sa:
        for k in sa[pid]:
            assert torch.equal(sa[pid][k], sb[pid][k])
    la = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_checkpoint_holds_everything_for_resume(tiny_overrides, tmp_path):
    cfg = _cfg("can", tiny_overrides)
    pretrain(cfg, tmp_path)
    ck = checkpoint.load(tmp_path)
    assert {"config", "model", "optimizer", "scaler", "scheduler", "step", "rng", "data", "code_version"} <= set(ck)
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    assert ck["config"] == cfg.to_dict()
    assert RunDir(tmp_path).read_status()["state"] == "done"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["final"]) == {"loss", "infonce", "rec", "denoise"}
    assert summary["fingerprint"]["method"] == "can" and "code_version" in summary["fingerprint"]
    enc, _, _ = checkpoint.load_encoder(tmp_path)
    assert torch.equal(enc.state_dict()["blocks.0.attn.qkv.weight"], ck["model"]["encoder.blocks.0.attn.qkv.weight"])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "infonce", "rec", "denoise", "lr", "img_per_s"} <= set(r) for r in rows)


def test_resume_refuses_a_different_config(tiny_overrides, tmp_path):
    pretrain(_cfg("can", tiny_overrides), tmp_path)
    with pytest.raises(ConfigError, match=r"method\.mask_ratio"):
        pretrain(_cfg("can", tiny_overrides, "method.mask_ratio=0.25"), tmp_path, resume=True)


def test_non_finite_loss_stops_names_step_and_term_keeps_last_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    cfg = _cfg("can", tiny_overrides)
    from canbench.methods.can import CAN

    orig = CAN.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = orig(self, batch)
        calls["n"] += 1
        if calls["n"] == 5:  # step 5
            out["rec"] = out["rec"] * float("nan")
            out["loss"] = out["loss"] + out["rec"]
        return out

    monkeypatch.setattr(CAN, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"'rec' at step 5"):
        pretrain(cfg, tmp_path)
    st = RunDir(tmp_path).read_status()
    assert st["state"] == "failed" and "step 5" in st["reason"] and "Traceback" in st["traceback"]
    ck = checkpoint.load(tmp_path)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_gradient_accumulation_matches_big_batch_for_mae(tiny_overrides, tmp_path):
    """MAE has no batch coupling: 2 x 4 accumulated == one batch of 8 (up to float summation order)."""
    a = _cfg("mae", tiny_overrides, "optim.max_steps=2")
    b = _cfg("mae", tiny_overrides, "optim.max_steps=2", "optim.accum_steps=2")
    pretrain(a, tmp_path / "a")
    pretrain(b, tmp_path / "b")
    ma, mb = checkpoint.load(tmp_path / "a")["model"], checkpoint.load(tmp_path / "b")["model"]
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["can", "simclr", "mae"])
def test_smoke_preset_trains_and_loss_decreases(method, tmp_path):
    cfg = build_config(method, "smoke", ["optim.max_steps=40", "train.log_every=4", "data.builtin_size=1024",
                                         "optim.epochs=4", "optim.warmup_epochs=0.5"])
    pretrain(cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:2]) / 2
    last = sum(r["loss"] for r in rows[-2:]) / 2
    assert last < 0.9 * first, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_compiled_engine_matches_eager(tiny_overrides, tmp_path, accum):
    """train.compile=true (what auto picks on CUDA): same losses and weights as eager, checkpoint keys
    without torch.compile's ``_orig_mod.`` prefix (so evaluation and resume load them); with accumulation the
    gradient cache's encoder passes are compiled too."""
    runs = {}
    for mode in ("false", "true"):
        pretrain(_cfg("simclr", tiny_overrides, "optim.max_steps=2", "train.log_every=1",
                      f"train.compile={mode}", f"optim.accum_steps={accum}"), tmp_path / mode)
        runs[mode] = [json.loads(x)["loss"] for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert len(runs["true"]) == 2
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4)
    ea, co = checkpoint.load(tmp_path / "false")["model"], checkpoint.load(tmp_path / "true")["model"]
    assert set(co) == set(ea) and not any("_orig_mod" in k for k in co)
    for k in ea:  # AdamW divides by sqrt(v): float-rounding differences in near-zero gradients show up
        torch.testing.assert_close(co[k], ea[k], atol=1e-4, rtol=1e-3)  # as up to ~lr-sized weight changes


def _lines(run) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    return [{k: v for k, v in json.loads(x).items() if k not in ("time", "img_per_s")}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_resume_between_log_lines_logs_what_an_uninterrupted_run_logs(tiny_overrides, tmp_path):
    """Preemption checkpoints land on any step: the window since the last log line and the final-loss window
    travel in the checkpoint, so the resumed run's lines and final losses equal the uninterrupted run's."""
    cfg = _cfg("can", tiny_overrides, "optim.max_steps=40", "optim.epochs=5", "train.log_every=5",
               "train.ckpt_every=38")
    full, part = tmp_path / "full", tmp_path / "part"
    a = pretrain(cfg, full)
    assert a["final_window"] == {"from_step": 37, "to_step": 40}  # the last tenth of 40 steps
    # stop after step 39: the last checkpoint is step 38, inside both the 36-40 log window and the final window
    Trainer(cfg, part, stop=lambda t: t.step >= 39).fit()
    assert checkpoint.load(part)["step"] == 38
    b = pretrain(cfg, part, resume=True)
    assert _lines(full) == _lines(part) and [r["step"] for r in _lines(part)] == list(range(5, 41, 5))
    assert a["final"] == b["final"] and set(a["final"]) == {"loss", "infonce", "rec", "denoise"}


def test_final_losses_are_the_mean_of_the_last_tenth_of_the_steps(tiny_overrides, tmp_path):
    cfg = _cfg("mae", tiny_overrides, "optim.max_steps=20", "optim.epochs=3", "train.log_every=1")
    summary = pretrain(cfg, tmp_path)
    rows = _lines(tmp_path)  # log_every=1: one line per step, each the step's own value
    assert summary["final_window"] == {"from_step": 19, "to_step": 20}
    expect = sum(r["loss"] for r in rows[-2:]) / 2
    assert summary["final"]["loss"] == pytest.approx(expect, rel=1e-6)


def test_summary_records_provenance_identity_and_the_checkpoint_it_belongs_to(tiny_overrides, tmp_path):
    from canbench.io import file_sha256

    summary = pretrain(_cfg("can", tiny_overrides), tmp_path)
    prov = summary["provenance"]
    # batch 8 on one process, no accumulation: each anchor sees the other 2 x 8 - 2 views as negatives
    assert (prov["world_size"], prov["per_device_batch"], prov["accum_steps"], prov["total_batch"]) == (1, 8, 1, 8)
    assert prov["negatives_per_anchor"] == 14 and prov["checkpoint_step"] == 6 and "commit" in prov
    assert summary["data_identity"] == {"name": "builtin", "split": "train", "version": 2, "size": 64}
    assert summary["checkpoint_sha256"] == file_sha256(tmp_path / "checkpoints" / "last.pt")
    # a fresh start (not a resume) removes what the previous run left, so its results are never filed under it
    (tmp_path / "checkpoints" / "last.pt").unlink()
    Trainer(_cfg("can", tiny_overrides), tmp_path, stop=lambda t: t.step >= 1).fit(resume=False)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "encoder.pt").exists()


def test_accumulation_keeps_the_negatives_of_the_whole_batch(tiny_overrides, tmp_path):
    prov = pretrain(_cfg("simclr", tiny_overrides, "optim.accum_steps=2", "optim.max_steps=1"), tmp_path)["provenance"]
    assert (prov["per_device_batch"], prov["accum_steps"], prov["total_batch"]) == (4, 2, 8)
    assert prov["negatives_per_anchor"] == 2 * 8 - 2  # the gradient cache: every anchor sees the whole batch
    prov = pretrain(_cfg("mae", tiny_overrides, "optim.max_steps=1"), tmp_path / "mae")["provenance"]
    assert prov["negatives_per_anchor"] is None
