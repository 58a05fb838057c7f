"""End-to-end grids through real executors: local (default suite), debug (in-process) and slurm
(``-m slurm``, against the cluster from ``slurm/cluster.sh up``). Tiny configs: a run is a few
seconds, mostly process start-up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from canbench.io import read_jsonl
from canbench.rundir import RunDir
from canbench.slurm import control
from canbench.slurm.grid import parse_spec
from canbench.slurm.runstore import collect, list_runs

pytestmark = pytest.mark.timeout(600)

TINY = {"optim.max_steps": 6, "model.img_size": 16, "model.patch_size": 4, "data.builtin_size": 128,
        "optim.batch_size": 16, "model.decoder_dim": 32, "model.decoder_depth": 1, "model.decoder_heads": 2,
        "model.proj_hidden": 64, "model.proj_out": 16, "train.log_every": 1, "train.ckpt_every": 2,
        "train.device": "cpu"}
SLURM_STATE = Path(os.environ.get("CANBENCH_SLURM_DIR", "/tmp/canbench-slurm"))


def tiny_spec(name: str, methods=("can", "simclr", "mae"), seeds=(0,), overrides=None, resources=None, axes=None,
              suites=()):
    prof = {"preset": "smoke", "overrides": {**TINY, **(overrides or {})},
            "resources": {"timeout_min": 30, "cpus_per_task": 1, **(resources or {})}}
    d = {"name": name, "benchmark": "smoke", "methods": list(methods), "seeds": list(seeds), "suites": list(suites),
         "scales": {"smoke": prof}}
    if axes:
        d["axes"] = axes
    return parse_spec(d)


def slurm_available() -> str | None:
    """None when a SLURM cluster answers, else the reason to skip."""
    if not os.environ.get("SLURM_CONF") and (SLURM_STATE / "etc" / "slurm.conf").is_file():
        os.environ["SLURM_CONF"] = str(SLURM_STATE / "etc" / "slurm.conf")
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo/sbatch) on PATH; start one with slurm/cluster.sh up"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if r.returncode != 0 or not r.stdout.strip():
        return f"no SLURM cluster answers sinfo ({r.stderr.strip()[:200]}); start one with slurm/cluster.sh up"
    return None


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny runs: one thread each (jobs inherit OMP_NUM_THREADS); two would fight over 2 busy cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def executor(request) -> str:
    name = request.param
    if name == "slurm":
        skip_without_slurm()
    return name


def skip_without_slurm() -> None:
    reason = slurm_available()
    if reason and os.environ.get("CANBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"CANBENCH_REQUIRE_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)


def param_executors(*names, slow_local: bool = False):
    """Executor parameters; the slurm one is marked ``slurm`` (and the local one ``slow`` if asked)."""
    marks = {"slurm": [pytest.mark.slurm], "local": [pytest.mark.slow] if slow_local else [], "debug": []}
    return pytest.mark.parametrize("executor", [pytest.param(n, marks=marks[n], id=n) for n in names],
                                   indirect=True)


def needs_engine():
    try:
        import canbench.data.loader  # noqa: F401
    except ImportError:
        pytest.skip("the data pipeline (canbench.data.loader) is not in this checkout yet")


def wait_until(pred, timeout_s: float, what: str, poll_s: float = 0.2):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl")]


@param_executors("local", "debug", "slurm")
def test_grid_completes_and_resubmit_submits_nothing(tmp_path, executor):
    needs_engine()
    t0 = time.monotonic()
    spec = tiny_spec("e2e")
    rep = control.submit_grid(spec, executor=executor, root=tmp_path / "g", wait=True, poll_s=0.5)
    assert len(rep.submitted) == 3
    if executor == "slurm":
        assert len({s.job_id.split("_")[0] for s in rep.jobs}) == 1  # one job array
    df = collect(tmp_path / "g")
    assert list(df["state"]) == ["done"] * 3, df[["run", "state", "reason"]].to_string()
    assert sorted(df["method"]) == ["can", "mae", "simclr"]
    assert (df["step"] == 6).all() and df["final:loss"].notna().all()
    for d in list_runs(tmp_path / "g"):
        st = RunDir(d).read_status()
        assert st["executor"] == executor and st["phase"] == "finished"
        assert (d / "summary.json").is_file() and (d / "checkpoints" / "last.pt").is_file()
    rep2 = control.submit_grid(spec, executor=executor, root=tmp_path / "g")
    assert rep2.submitted == [] and len(rep2.skipped["done"]) == 3
    print(f"{executor}: 3-run grid in {time.monotonic() - t0:.1f} s")


def test_suites_run_after_pretraining_and_their_failure_is_reported(tmp_path, monkeypatch):
    """In-process: run_suites(run_dir, suites) is called after fit; its results / its error land in status."""
    needs_engine()
    calls = []

    def run_suites(run_dir, suites):
        calls.append((Path(run_dir), list(suites)))
        if (Path(run_dir) / "boom").exists():
            raise RuntimeError("probe diverged")
        return {s: {"metrics": {"top1": 12.5, "curve": [1, 2]}, "path": Path(run_dir) / "eval" / f"{s}.json",
                    "skipped": False} for s in suites}

    from canbench.evaluation import runner

    monkeypatch.setattr(runner, "run_suites", run_suites)
    spec = tiny_spec("suites", methods=("mae",), seeds=(0, 1), suites=["knn", "linear"])
    runs = control.plan(spec, "smoke", executor="debug", root=tmp_path)[0]
    (tmp_path / runs[1].folder_name).mkdir(parents=True)
    (tmp_path / runs[1].folder_name / "boom").touch()
    control.submit_grid(spec, executor="debug", root=tmp_path)
    ok, bad = list_runs(tmp_path)
    assert calls == [(ok, ["knn", "linear"]), (bad, ["knn", "linear"])]
    st = RunDir(ok).read_status()
    assert st["state"] == "done" and st["suites"]["linear"]["metrics"] == {"top1": 12.5}
    st = RunDir(bad).read_status()
    assert st["state"] == "failed" and st["phase"] == "eval" and "probe diverged" in st["reason"]
    assert "RuntimeError: probe diverged" in st["traceback"]
    assert (bad / "checkpoints" / "last.pt").is_file()  # the pretraining result is kept


def test_a_job_killed_between_training_and_evaluation_is_evaluated_on_resubmit(tmp_path, monkeypatch):
    """The trainer marks ``done`` at phase ``trained``; a job killed before its evaluation leaves that behind. The
    run is not finished: status shows it interrupted and the next submit evaluates it without retraining."""
    needs_engine()
    calls = []

    def run_suites(run_dir, suites):
        calls.append(list(suites))
        if len(calls) == 1:
            raise KeyboardInterrupt  # the job is killed as its evaluation starts
        return {s: {"metrics": {"top1": 12.5}, "path": Path(run_dir) / "eval" / f"{s}.json", "skipped": False}
                for s in suites}

    from canbench.evaluation import runner

    monkeypatch.setattr(runner, "run_suites", run_suites)
    spec = tiny_spec("evalgap", methods=("mae",), suites=["knn"])
    with pytest.raises(KeyboardInterrupt):
        control.submit_grid(spec, executor="debug", root=tmp_path)
    (d,) = list_runs(tmp_path)
    # what a SIGKILL in the gap leaves: the trainer's "done" (the job had not yet written "running / eval")
    RunDir(d).update_status("done", phase="trained")
    steps = [r["step"] for r in read_jsonl(d / "metrics.jsonl")]
    assert control.reconcile([d])[d] == "resumable"
    assert RunDir(d).read_status()["state"] == "interrupted"
    rep = control.submit_grid(spec, executor="debug", root=tmp_path)
    assert rep.submitted == [d] and calls == [["knn"], ["knn"]]
    st = RunDir(d).read_status()
    assert st["state"] == "done" and st["phase"] == "finished" and st["suites"]["knn"]["metrics"] == {"top1": 12.5}
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == steps  # not trained again


def test_interrupted_run_resumes_from_its_checkpoint_on_resubmit(tmp_path, monkeypatch):
    """A run whose job died after its step-2 checkpoint is resubmitted and continues at step 2."""
    from canbench.train import checkpoint

    needs_engine()
    spec = tiny_spec("resume", methods=("mae",))
    real_save = checkpoint.save

    def save_then_die(run_dir, **kw):
        real_save(run_dir, **kw)
        raise KeyboardInterrupt  # the process is killed right after its first checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        control.submit_grid(spec, executor="debug", root=tmp_path)
    (d,) = list_runs(tmp_path)
    assert RunDir(d).read_status()["state"] == "running"
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [1, 2]
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert control.reconcile([d])[d] == "resumable"
    rep = control.submit_grid(spec, executor="debug", root=tmp_path)
    assert rep.submitted == [d]
    st = RunDir(d).read_status()
    assert st["state"] == "done" and st["attempts"] == 2
    assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert torch.load(d / "checkpoints" / "last.pt", weights_only=True)["step"] == 6


@param_executors("local", "slurm", slow_local=True)  # ~15-35 s on 2 cores: 2 job processes + a reference
def test_two_task_ddp_matches_one_process(tmp_path, executor):
    needs_engine()
    spec1 = tiny_spec("ddp", methods=("can",), overrides={"optim.max_steps": 4})
    spec2 = tiny_spec("ddp", methods=("can",), overrides={"optim.max_steps": 4}, resources={"tasks_per_node": 2})
    control.submit_grid(spec2, executor=executor, root=tmp_path / "two", wait=True, poll_s=0.5)
    control.submit_grid(spec1, executor="debug", root=tmp_path / "one")
    (two,), (one,) = list_runs(tmp_path / "two"), list_runs(tmp_path / "one")
    assert two.name == one.name  # same config, same run id: world size is not part of the config
    assert RunDir(two).read_status()["state"] == "done", RunDir(two).read_status().get("traceback")
    summary = json.loads((two / "summary.json").read_text())
    assert summary["fingerprint"]["world_size"] == 2
    l1, l2 = losses(one), losses(two)
    assert len(l1) == len(l2) == 4
    rel = max(abs(a - b) / abs(a) for a, b in zip(l1, l2))
    print(f"{executor}: 2-task DDP vs 1 process, max relative loss difference {rel:.2e}")
    assert rel <= 1e-4, (l1, l2)


@param_executors("local", "slurm")
def test_failing_run_reported_failed_with_traceback(tmp_path, executor):
    needs_engine()
    spec = tiny_spec("fail", methods=("mae",), overrides={"train.device": "cuda"})
    if torch.cuda.is_available():
        pytest.skip("train.device=cuda does not fail on a machine with a GPU")
    control.submit_grid(spec, executor=executor, root=tmp_path / "g", wait=True, poll_s=0.5)
    (d,) = list_runs(tmp_path / "g")
    st = RunDir(d).read_status()
    assert st["state"] == "failed"
    assert "train.device='cuda'" in st["reason"] and "Traceback" in st["traceback"]
    rep = control.submit_grid(spec, executor=executor, root=tmp_path / "g")
    assert rep.submitted == [] and rep.skipped["failed (use --retry-failed)"] == [d]


@param_executors("local", "slurm")
def test_cancelled_run_reported_cancelled(tmp_path, executor):
    needs_engine()
    spec = tiny_spec("cancel", methods=("mae",), overrides={"optim.max_steps": 100000, "train.ckpt_every": 1000})
    control.submit_grid(spec, executor=executor, root=tmp_path / "g")
    (d,) = list_runs(tmp_path / "g")
    wait_until(lambda: (d / "metrics.jsonl").is_file(), 120, "the run to start training")
    assert control.cancel_grid(tmp_path / "g") == [d]
    kinds = control.wait_grid(tmp_path / "g", poll_s=0.5, timeout_s=60)
    assert kinds[d] == "cancelled"
    st = RunDir(d).read_status()
    assert st["state"] == "cancelled" and "cancel" in st["reason"]
    df = control.status_grid(tmp_path / "g")
    assert list(df["state"]) == ["cancelled"]


@pytest.mark.slurm
def test_preempted_job_resumes_at_the_exact_step_bit_identical(tmp_path):
    skip_without_slurm()
    needs_engine()
    # no periodic checkpoint: the only one before the end is the one written on preemption
    over = {"optim.epochs": 10, "optim.max_steps": 60, "train.ckpt_every": 100000}
    spec = tiny_spec("requeue", methods=("can",), overrides=over, resources={"timeout_min": 30})  # > 10: gotcha 5
    rep = control.submit_grid(spec, executor="slurm", root=tmp_path / "g")
    (d,) = list_runs(tmp_path / "g")
    job = rep.jobs[0].handle

    def step() -> int:
        rows = read_jsonl(d / "metrics.jsonl")
        return rows[-1]["step"] if rows else 0

    wait_until(lambda: step() >= 10, 180, "10 training steps", poll_s=0.05)
    job._interrupt()  # preemption: SIGTERM, then USR2 -> checkpoint() between two steps -> requeue
    t_int = time.time()
    kinds = control.wait_grid(tmp_path / "g", poll_s=1.0, timeout_s=400)
    st = RunDir(d).read_status()
    assert kinds[d] == "done" and st["state"] == "done", st
    assert st["attempts"] == 2 and st["requeued"] >= t_int - 1
    rows = read_jsonl(d / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 61))  # the second attempt continued the first one's metrics
    gap = max(range(1, len(rows)), key=lambda i: rows[i]["time"] - rows[i - 1]["time"])
    resumed_at = steps[gap - 1]
    assert 10 <= resumed_at < 60 and rows[gap]["time"] - rows[gap - 1]["time"] > 5  # cred_expire wait
    log_text = Path(st["log_err"]).read_text() + Path(st["log_out"]).read_text()
    assert f"at step {resumed_at}" in log_text, log_text[-3000:]

    control.submit_grid(spec, executor="debug", root=tmp_path / "ref")  # uninterrupted, in-process
    (ref,) = list_runs(tmp_path / "ref")
    a = torch.load(d / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 60
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    print(f"preempted at step {resumed_at}, resumed and finished bit-identical")


def test_local_lanes_snake_and_threads_share():
    from canbench.slurm.executors import local_lanes, local_threads

    assert local_lanes(6, 2) == [0, 1, 1, 0, 0, 1]
    assert local_lanes(7, 3) == [0, 1, 2, 2, 1, 0, 0]
    assert local_lanes(3, 1) == [0, 0, 0]
    # seed 0 of each of 3 methods (listed can-s0, can-s1, simclr-s0, ...) lands on both jobs, not one
    lanes = local_lanes(6, 2)
    assert sorted(lanes[0::2]) == [0, 0, 1]
    assert local_threads(4, 2, cpu_count=2) == 1 and local_threads(1, 2, cpu_count=16) == 1
    assert local_threads(4, 2, cpu_count=16) == 4 and local_threads(4, 1, cpu_count=2) is None


def test_chain_job_keeps_its_thread_count_across_pickling_and_requeue(tmp_path):
    import pickle

    from canbench.slurm.job import ChainJob

    job = pickle.loads(pickle.dumps(ChainJob([tmp_path / "a", tmp_path / "b"], threads=1)))
    assert job.threads == 1 and job.run_dirs == [str((tmp_path / "a").resolve()), str((tmp_path / "b").resolve())]
    again = job.checkpoint().function  # the requeued job (no run is done yet: both remain)
    assert again.threads == 1 and again.run_dirs == job.run_dirs
