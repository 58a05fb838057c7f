"""Checkpoints a run can trust: sha256 recorded at write and verified at read, fallback to the previous good
checkpoint, the wall-clock cadence, leftovers of killed writes, a full disk, and a kill soak (slow)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from canbench import io
from canbench.config import ConfigError, derived
from canbench.rundir import RunDir
from canbench.slurm.control import reconcile
from canbench.train import checkpoint
from canbench.train import logger as logger_mod
from canbench.train import trainer as trainer_mod
from canbench.train.recipe import build_config
from canbench.train.trainer import Trainer, pretrain

REPO = Path(__file__).resolve().parent.parent


def _cfg(tiny: list[str], method: str = "can", *extra: str):
    return build_config(method, "smoke", tiny + ["optim.max_steps=6", "optim.epochs=1", *extra])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = checkpoint.load(a_dir), checkpoint.load(b_dir)
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in RunDir(run).read_metrics()]


def _stopped_at(cfg, run: Path, step: int) -> None:
    """Train ``run`` until ``step`` and stop (what a preemption does); checkpoints at every ckpt_every step."""
    res = Trainer(cfg, run, stop=lambda t: t.step >= step).fit(resume=True)
    assert res == {"state": "stopped", "step": step}


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])


def test_every_checkpoint_and_the_encoder_have_their_sha256_recorded(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(tiny_overrides), run)
    rd = RunDir(run)
    sums = json.loads((rd.checkpoint_dir / io.CHECKSUMS).read_text())["sha256"]
    # last.pt is step 6; prev.pt, the one before it, is step 4 (ckpt_every=2)
    assert _sha(rd.last_checkpoint) in sums and _sha(rd.prev_checkpoint) in sums
    assert checkpoint.load(rd.prev_checkpoint)["step"] == 4
    enc_sums = json.loads((run / io.CHECKSUMS).read_text())["sha256"]
    assert _sha(rd.encoder_path) in enc_sums
    assert io.verify_checksum(rd.last_checkpoint) is True and io.verify_checksum(rd.encoder_path) is True
    other = tmp_path / "plain.pt"  # a file nobody recorded is not judged
    torch.save({"x": torch.ones(2)}, other)
    assert io.verify_checksum(other) is None


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["64-flipped-bytes", "truncated"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one_bit_identical(damage, tiny_overrides, tmp_path,
                                                                               caplog):
    cfg = _cfg(tiny_overrides)
    full = tmp_path / "full"
    pretrain(cfg, full)
    part = tmp_path / "part"
    _stopped_at(cfg, part, 5)  # last.pt = step 4, prev.pt = step 2
    last = RunDir(part).last_checkpoint
    damage(last)
    with caplog.at_level(logging.WARNING, logger="canbench.pretrain"):
        pretrain(cfg, part, resume=True)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(last) in m for m in warned), warned
    assert any("previous checkpoint" in m and "step 2" in m for m in warned), warned
    _assert_same_weights(full, part)
    assert _losses(full) == _losses(part)  # metrics continuous: each step once, the same values


def test_no_good_checkpoint_left_is_a_clear_error_exit_2(tiny_overrides, tmp_path):
    cfg = _cfg(tiny_overrides)
    part = tmp_path / "part"
    _stopped_at(cfg, part, 5)
    _flip(RunDir(part).last_checkpoint)
    _truncate(RunDir(part).prev_checkpoint)
    with pytest.raises(ConfigError, match="no good checkpoint left"):
        pretrain(cfg, part, resume=True)
    args = [sys.executable, "-m", "canbench", "pretrain", "can", "--preset", "smoke", "--out", str(part),
            "--resume"] + [x for o in tiny_overrides + ["optim.max_steps=6", "optim.epochs=1"] for x in ("--set", o)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "no good checkpoint left" in r.stderr
    assert str(RunDir(part).last_checkpoint) in r.stderr


def test_a_corrupted_checkpoint_is_refused_for_evaluation_naming_the_file(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(tiny_overrides), run)
    last = RunDir(run).last_checkpoint
    enc, _, _ = checkpoint.load_encoder(run)  # intact: loads
    _flip(last)
    with pytest.raises(ConfigError, match="corrupted") as e:
        checkpoint.load_encoder(last)
    assert str(last) in str(e.value)
    _flip(RunDir(run).encoder_path)
    with pytest.raises(ConfigError, match="corrupted"):
        io.torch_load(RunDir(run).encoder_path)


def test_evaluate_cli_refuses_a_corrupted_checkpoint(tiny_overrides, tmp_path, capsys):
    from canbench.cli import main

    run = tmp_path / "run"
    pretrain(_cfg(tiny_overrides), run)
    _flip(RunDir(run).last_checkpoint)
    assert main(["evaluate", "knn", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and str(RunDir(run).last_checkpoint) in err


def test_wall_clock_cadence_checkpoints_on_a_step_boundary(tiny_overrides, tmp_path, monkeypatch):
    holder: dict = {}
    # a clock that advances 20 s per completed step: with ckpt_minutes=0.5 a checkpoint every 2nd step
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(
        monotonic=lambda: 20.0 * holder["t"].step if "t" in holder else 0.0))

    def stop(t):
        holder["t"] = t
        return t.step >= 5

    for minutes, expect in ((0.5, 4), (0.0, None)):
        holder.clear()
        cfg = _cfg(tiny_overrides, "can", "train.ckpt_every=1000", f"train.ckpt_minutes={minutes}")
        run = tmp_path / f"m{minutes}"
        Trainer(cfg, run, stop=stop).fit()
        on_disk = checkpoint.load(run)["step"] if RunDir(run).has_checkpoint() else None
        assert on_disk == expect, (minutes, on_disk)


def test_smoke_preset_checkpoints_before_it_ends():
    cfg = build_config("can", "smoke", [])
    total = derived(cfg, cfg.data.builtin_size).total_steps
    assert cfg.train.ckpt_every < total and total % cfg.train.ckpt_every == 0, (cfg.train.ckpt_every, total)
    from canbench.train.recipe import list_presets

    long_runs = {n: raw for n, raw in list_presets().items() if n not in ("smoke", "probe")}
    assert {"small", "vit_b_in1k", "vit_l_jft"} <= set(long_runs)
    for name, raw in long_runs.items():  # hours to weeks: a wall-clock cadence as well
        assert raw["config"]["train"].get("ckpt_minutes", 0) > 0, name


def test_leftover_temp_files_of_killed_writes_are_removed_on_the_next_start(tiny_overrides, tmp_path):
    cfg = _cfg(tiny_overrides)
    run = tmp_path / "run"
    _stopped_at(cfg, run, 3)
    rd = RunDir(run)
    leftovers = [rd.checkpoint_dir / ".last.pt.k1ll3d.tmp", run / ".status.json.k1ll3d.tmp",
                 run / ".metrics.jsonl.abc.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    pretrain(cfg, run, resume=True)
    assert not any(p.exists() for p in leftovers)
    assert not list(run.rglob("*.tmp"))


def test_a_full_disk_stops_cleanly_status_stays_true_and_resume_is_bit_identical(tiny_overrides, tmp_path,
                                                                                 monkeypatch):
    cfg = _cfg(tiny_overrides)
    full = tmp_path / "full"
    pretrain(cfg, full)
    part = tmp_path / "part"
    disk = {"full": False}
    real_atomic, real_append = io.atomic_path, logger_mod.append_jsonl

    def atomic_path(path):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_atomic(path)

    def append_jsonl(path, obj):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_append(path, obj)

    monkeypatch.setattr(io, "atomic_path", atomic_path)
    monkeypatch.setattr(logger_mod, "append_jsonl", append_jsonl)

    def stop(t):  # the disk fills up after step 3: the checkpoint of step 4 cannot be written
        disk["full"] = t.step >= 3
        return False

    with pytest.raises(ConfigError, match="No space left on device") as e:
        Trainer(cfg, part, stop=stop).fit()
    assert "step 2" in str(e.value)  # the last good checkpoint it names
    disk["full"] = False
    rd = RunDir(part)
    assert rd.read_status()["state"] == "running"  # writing "failed" failed as well ...
    assert rd.owner() is None and rd.live_state() == "interrupted"  # ... but no process owns the run
    assert reconcile([part]) == {part: "resumable"} and rd.read_status()["state"] == "interrupted"
    assert not list(part.rglob("*.tmp")) and checkpoint.load(part)["step"] == 2  # nothing corrupted
    assert io.verify_checksum(rd.last_checkpoint) is True
    monkeypatch.undo()
    pretrain(cfg, part, resume=True)  # space freed
    _assert_same_weights(full, part)
    assert _losses(full) == _losses(part)


# ---- the kill soak ------------------------------------------------------------------------------------------
SOAK = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
        "model.proj_out=16", "model.img_size=16", "model.patch_size=4", "data.builtin_size=256",
        "optim.batch_size=8", "train.log_every=1", "train.ckpt_every=1", "train.count_flops=false",
        "optim.max_steps=80", "optim.epochs=3", "train.device=cpu"]


def _spawn_pretrain(method: str, out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "canbench", "pretrain", method, "--preset", "smoke", "--out", str(out),
            "--resume"] + [x for o in SOAK for x in ("--set", o)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})


def _resume_with(executor: str, run: Path) -> None:
    """Finish the run as a grid job would: in this process (debug) or in a submitit local job."""
    import submitit

    from canbench.slurm.job import RunJob

    if executor == "debug":
        RunJob(run)()
        return
    ex = submitit.AutoExecutor(folder=run.parent / f".submitit-{run.name}", cluster="local")
    ex.update_parameters(timeout_min=20)
    ex.submit(RunJob(run)).result()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method,executor", [("can", "local"), ("simclr", "debug"), ("mae", "local")])
def test_kill_soak_sigkill_anywhere_then_resume_is_bit_identical(method, executor, tmp_path):
    rng = random.Random(f"{method}-soak")
    cfg = build_config(method, "smoke", SOAK)
    full = tmp_path / "full"
    pretrain(cfg, full)
    part = tmp_path / "part"
    kills = 0
    for _ in range(3):  # SIGKILL at random moments: steps, checkpoint writes (every step), status writes
        before = max([s for s, _ in _losses(part)] or [0])
        proc = _spawn_pretrain(method, part)
        t0 = time.monotonic()
        while proc.poll() is None and max([s for s, _ in _losses(part)] or [0]) <= before:
            assert time.monotonic() - t0 < 300, "the resumed trainer made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(60)
        if RunDir(part).read_status().get("state") == "done":
            break
        assert RunDir(part).owner() is None  # the dead trainer holds nothing
    assert kills >= 2
    _resume_with(executor, part)  # resubmitted through another executor: the same config, the same threads
    assert RunDir(part).read_status()["state"] == "done"
    _assert_same_weights(full, part)
    steps = [s for s, _ in _losses(part)]
    assert steps == list(range(1, 81)) and _losses(full) == _losses(part)
    assert not list(part.rglob("*.tmp"))
    summary = RunDir(part).read_summary()
    assert summary["provenance"]["threads"] == cfg.train.threads == 1


def test_the_thread_count_comes_from_the_config_on_every_attempt_and_is_recorded(tiny_overrides, tmp_path):
    from canbench.slurm.job import ChainJob

    seen: list[int] = []

    def stop(t):
        seen.append(torch.get_num_threads())
        return t.step >= 3

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2  # what this process (or an executor's share of the cores) would give
    torch.set_num_threads(other)
    try:
        cfg = _cfg(tiny_overrides, "can", f"train.threads={3 - other}")  # 1 or 2, never the process's count
        run = tmp_path / "run"
        Trainer(cfg, run, stop=stop).fit()  # fresh
        Trainer(cfg, run, stop=lambda t: stop(t) or t.step >= 5).fit()  # resumed
        assert set(seen) == {cfg.train.threads} and torch.get_num_threads() == other  # restored for the caller
        RunDir(run).write_config(cfg.to_dict())
        ChainJob([run], threads=other)()  # resubmitted through the local executor, which shares out the cores
        assert RunDir(run).read_status()["state"] == "done"
        assert RunDir(run).read_summary()["provenance"]["threads"] == cfg.train.threads
    finally:
        torch.set_num_threads(before)


def test_starting_over_drops_the_old_checkpoints_so_none_becomes_a_fallback(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(tiny_overrides), run)
    assert RunDir(run).prev_checkpoint.is_file()
    other = _cfg(tiny_overrides, "can", "optim.base_lr=1e-4")
    res = Trainer(other, run, stop=lambda t: t.step >= 1).fit(resume=False)  # pretrain --force, stopped early
    assert res["step"] == 1
    assert not RunDir(run).last_checkpoint.exists() and not RunDir(run).prev_checkpoint.exists()
    pretrain(other, run, resume=True)  # starts from 0: nothing of the other run is resumed
    assert checkpoint.load(run)["config"] == other.to_dict()


def test_a_torch_save_that_fails_on_a_full_disk_is_reported_as_no_space_and_keeps_the_old_file(tmp_path,
                                                                                               monkeypatch):
    import shutil

    path = tmp_path / "last.pt"
    io.torch_save_atomic({"step": 1}, path, previous=tmp_path / "prev.pt")
    good = path.read_bytes()

    def failing_save(obj, f):  # what torch raises when the disk fills up mid-write
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4845696 vs 4845584")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=1, used=1, free=0))
    with pytest.raises(OSError) as e:
        io.torch_save_atomic({"step": 2}, path, previous=tmp_path / "prev.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == good and not list(tmp_path.glob("*.tmp"))
