"""One owner per run folder: the trainer's own lock, refused second trainers, truthful grid status, concurrent
submits, SIGTERM that stops a job within seconds keeping its work, and no unpickling of submitit's results."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from test_grid_runstore import FakeBackend

from canbench.rundir import RunBusyError, RunDir
from canbench.slurm import control
from canbench.slurm.executors import BACKENDS, JobState
from canbench.slurm.grid import parse_spec
from canbench.slurm.runstore import list_runs
from canbench.train import checkpoint
from canbench.train.recipe import build_config
from canbench.train.trainer import Trainer

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parent.parent
TINY = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
        "model.proj_out=16", "model.img_size=16", "model.patch_size=4", "data.builtin_size=64",
        "optim.batch_size=8", "train.log_every=1", "train.count_flops=false", "train.device=cpu"]

HOLD = """
import sys, time
from canbench.rundir import RunDir
with RunDir(sys.argv[1]).own(job_id="J42"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder():
    """``holder(path)``: another process that owns ``path`` until killed (SIGKILL: it cannot clean up)."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_second_owner_is_refused_naming_the_holder_and_a_killed_one_holds_nothing(tmp_path, holder):
    run = RunDir(tmp_path / "run")
    assert run.owner() is None
    proc = holder(run.path)
    info = run.owner()
    assert info["pid"] == proc.pid and info["job_id"] == "J42"
    with pytest.raises(RunBusyError, match=rf"pid {proc.pid} on .* \(job J42\)"):
        with run.own():
            pass
    proc.kill()
    proc.wait()
    assert run.owner() is None  # the kernel released the dead owner's lock
    with run.own(job_id="mine"):
        assert run.owner()["pid"] == os.getpid()
        with run.own():  # nesting in the owning process (a grid job: training, then evaluation)
            pass
        assert run.owner() is not None
    assert run.owner() is None


def test_pretrain_refuses_a_second_trainer_on_the_same_out(tmp_path, holder, capsys):
    from canbench.cli import main

    out = tmp_path / "run"
    proc = holder(out)
    argv = ["pretrain", "can", "--preset", "smoke", "--out", str(out)] + [x for o in TINY for x in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pid {proc.pid}" in err and "J42" in err and "Traceback" not in err
    cfg = build_config("can", "smoke", TINY + ["optim.max_steps=2"])
    with pytest.raises(RunBusyError):  # the trainer checks on its own (any caller, e.g. a grid job)
        Trainer(cfg, out).fit()
    assert not (out / "metrics.jsonl").exists() and not (out / "status.json").exists()


@pytest.mark.slow  # ~50 s: the first trainer must still run when the second has started
def test_two_concurrent_pretrains_into_one_folder_one_is_refused_the_other_logs_each_step_once(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "canbench", "pretrain", "can", "--preset", "smoke", "--out", str(out), "--force"]
    args += [x for o in TINY + ["optim.max_steps=300", "optim.epochs=100", "train.ckpt_every=50"]
             for x in ("--set", o)]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "metrics.jsonl").is_file():
        assert first.poll() is None and time.monotonic() - t0 < 120, first.communicate()[1][-2000:]
        time.sleep(0.05)
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first trainer ended before the second started: raise optim.max_steps"
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr, second.stderr[-2000:]
    assert first.wait(300) == 0
    steps = [r["step"] for r in RunDir(out).read_metrics()]
    assert steps == list(range(1, 301))


# ---- grids --------------------------------------------------------------------------------------------------
class LedgerBackend(FakeBackend):
    """Jobs are lines in ``<root>/jobs.jsonl``; a job is alive until its id is listed in ``<root>/ended.json``."""

    name = "ledger"

    def _ledger(self, folder):
        return folder.parent.parent / "jobs.jsonl"

    def states(self, status):
        out = []
        for s in status:
            ended = Path(s["submitit_folder"]).parent.parent / "ended.json"
            gone = json.loads(ended.read_text()) if ended.exists() else []
            out.append(JobState(s["job_id"] not in gone, "EXITED" if s["job_id"] in gone else "RUNNING"))
        return out

    def cancel(self, status):
        pass


def _spec():
    return parse_spec({"name": "own", "benchmark": "smoke", "methods": ["can", "mae"], "seeds": [0],
                       "scales": {"smoke": {"preset": "smoke", "overrides": {"optim.max_steps": 2}}}})


def _jobs(root: Path) -> list[dict]:
    p = root / "jobs.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _end_all_jobs(root: Path) -> None:
    (root / "ended.json").write_text(json.dumps([j["job_id"] for j in _jobs(root)]))


@pytest.fixture
def ledger(monkeypatch):
    monkeypatch.setitem(BACKENDS, "ledger", LedgerBackend)
    return LedgerBackend


def test_a_locked_run_is_alive_even_when_its_job_is_gone_and_dead_runs_show_as_interrupted(tmp_path, ledger,
                                                                                          holder):
    root = tmp_path / "grid"
    control.submit_grid(_spec(), root=root, backend=ledger())
    owned, orphan = list_runs(root)
    for d in (owned, orphan):
        RunDir(d).update_status("running", step=1)
    _end_all_jobs(root)  # both controllers are gone ...
    proc = holder(owned)  # ... but a trainer still owns one folder
    rep = control.submit_grid(_spec(), root=root, backend=ledger())
    assert rep.submitted == [orphan] and rep.skipped["queued or running"] == [owned]
    assert [j["run"] for j in _jobs(root)].count(str(owned)) == 1  # never started a second time
    df = control.status_grid(root).set_index("folder")
    assert df.loc[str(owned), "state"] == "running"
    proc.kill()
    proc.wait()
    _end_all_jobs(root)
    df = control.status_grid(root).set_index("folder")  # nobody trains either run now: shown as dead
    assert list(df["state"]) == ["interrupted", "interrupted"]
    assert "no process owns the run folder" in RunDir(owned).read_status()["reason"]
    rep = control.submit_grid(_spec(), root=root, backend=ledger())
    assert sorted(rep.submitted) == sorted([owned, orphan])


def _racer(root: str, out: str) -> None:
    BACKENDS["ledger"] = LedgerBackend
    b = LedgerBackend()
    b.delay_s = 0.5
    rep = control.submit_grid(_spec(), root=root, backend=b)
    Path(out).write_text(json.dumps([str(d) for d in rep.submitted]))


def test_two_concurrent_submits_give_one_job_per_run(tmp_path, ledger, holder):
    root = tmp_path / "grid"
    control.submit_grid(_spec(), root=root, backend=ledger())
    owned, orphan = list_runs(root)
    _end_all_jobs(root)
    holder(owned)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_racer, args=(str(root), str(tmp_path / f"n{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    submitted = sorted(json.loads((tmp_path / f"n{i}").read_text()) for i in range(2))
    assert submitted == [[], [str(orphan)]]
    runs = [j["run"] for j in _jobs(root)]
    assert runs.count(str(orphan)) == 2 and runs.count(str(owned)) == 1  # the first submit, then one resubmit


def test_grid_status_never_unpickles_the_submitit_result_file(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "grid"
    cfg = build_config("can", "smoke", TINY)
    from canbench.slurm.runstore import prepare_run

    d = prepare_run(root, "can-s0-0000000000", cfg.to_dict())
    pid = _dead_pid()
    folder = root / ".submitit" / "x"
    result = submitit.core.utils.JobPaths(folder, str(pid), 0).result_pickle
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_bytes(pickle.dumps(("success", Payload())))
    RunDir(d).update_status("running", job_id=str(pid), executor="local", submitit_folder=str(folder), step=3)
    assert control.reconcile([d]) == {d: "resumable"}  # what grid submit decides with
    df = control.status_grid(root)
    assert list(df["state"]) == ["interrupted"]
    assert not marker.exists()


# ---- SIGTERM ------------------------------------------------------------------------------------------------
JOB = """
import sys
from canbench.slurm.job import RunJob, stop_on_sigterm
stop_on_sigterm()  # what a local / SLURM job installs (submitit's own handler ignores SIGTERM)
print(RunJob(sys.argv[1])(), flush=True)
"""


def test_sigterm_stops_a_grid_job_within_seconds_and_keeps_its_work(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = build_config("mae", "smoke", TINY + ["optim.max_steps=100000", "optim.epochs=10000",
                                               "train.ckpt_every=100000"])
    run.write_config(cfg.to_dict())
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(run.path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while len(run.read_metrics()) < 3:
        assert proc.poll() is None and time.monotonic() - t0 < 180, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    t_term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert time.monotonic() - t_term < 10 and proc.returncode == 0
    st = run.read_status()
    assert st["state"] == "interrupted" and "SIGTERM" in st["reason"], st
    kept = checkpoint.load(run.path)["step"]
    assert kept == st["step"] >= 3  # the steps done were saved, not lost (no periodic checkpoint before)
    assert run.read_metrics()[-1]["step"] == kept and run.owner() is None


def test_grid_cancel_stops_local_jobs_within_seconds_keeping_their_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    over = {"optim.max_steps": 100000, "optim.epochs": 10000, "train.ckpt_every": 100000, "train.log_every": 1,
            "model.img_size": 16, "model.patch_size": 4, "data.builtin_size": 64, "optim.batch_size": 8,
            "model.decoder_dim": 32, "model.decoder_depth": 1, "model.decoder_heads": 2, "train.device": "cpu"}
    spec = parse_spec({"name": "cancel", "benchmark": "smoke", "methods": ["mae"], "seeds": [0],
                       "scales": {"smoke": {"preset": "smoke", "overrides": over,
                                            "resources": {"timeout_min": 30, "cpus_per_task": 1}}}})
    control.submit_grid(spec, executor="local", root=tmp_path / "g")
    (d,) = list_runs(tmp_path / "g")
    t0 = time.monotonic()
    while len(RunDir(d).read_metrics()) < 3:
        assert time.monotonic() - t0 < 180, RunDir(d).read_status()
        time.sleep(0.1)
    t_cancel = time.monotonic()
    assert control.cancel_grid(tmp_path / "g") == [d]
    assert time.monotonic() - t_cancel < 12
    st = RunDir(d).read_status()
    assert st["state"] == "cancelled" and RunDir(d).owner() is None
    assert checkpoint.load(d)["step"] >= 3  # SIGTERM let it save the steps it had done
    assert list(control.status_grid(tmp_path / "g")["state"]) == ["cancelled"]
