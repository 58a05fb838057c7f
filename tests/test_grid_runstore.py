"""Run store and submission logic without a real executor: idempotence, the grid lock, reconciliation,
the status table. A fake backend records submissions in a file and answers job states from it."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from canbench.io import read_yaml
from canbench.rundir import RunDir
from canbench.slurm import control
from canbench.slurm.executors import BACKENDS, Backend, JobState, Submitted
from canbench.slurm.grid import parse_spec
from canbench.slurm.runstore import collect, format_table, grid_lock, list_runs


def spec(**kw):
    d = {"name": "fake", "benchmark": "smoke", "methods": ["can", "mae"], "seeds": [0, 1],
         "scales": {"smoke": {"preset": "smoke", "overrides": {"optim.max_steps": 2}}}}
    d.update(kw)
    return parse_spec(d)


class FakeBackend(Backend):
    """Jobs are lines in ``<root>/../fake_jobs.jsonl``; a job is alive until listed in ``fake_ended.json``."""

    name = "fake"
    delay_s = 0.0

    def __init__(self, ledger: Path | None = None):
        self.ledger = ledger

    def _ledger(self, folder: Path) -> Path:
        return self.ledger or folder.parent / "fake_jobs.jsonl"

    def submit(self, run_dirs, res, folder, job_name):
        time.sleep(self.delay_s)  # widen the race window between two submitters
        out = []
        with open(self._ledger(folder), "a") as f:
            for d in run_dirs:
                jid = f"{Path(d).name}@{time.time_ns()}"
                f.write(json.dumps({"job_id": jid, "run": str(d)}) + "\n")
                out.append(Submitted(jid, "", ""))
        return out

    def states(self, status):
        ended = {}
        for s in status:
            p = Path(s["submitit_folder"]).parent / "fake_ended.json"
            if p.exists():
                ended.update(json.loads(p.read_text()))
        return [JobState(s["job_id"] not in ended, ended.get(s["job_id"], "RUNNING")) for s in status]

    def cancel(self, status):
        for s in status:
            p = Path(s["submitit_folder"]).parent / "fake_ended.json"
            cur = json.loads(p.read_text()) if p.exists() else {}
            cur[s["job_id"]] = "CANCELLED"
            p.write_text(json.dumps(cur))


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(BACKENDS, "fake", FakeBackend)
    return FakeBackend


def end_jobs(root: Path, state: str = "COMPLETED", runs=None):
    p = root / ".submitit" / "fake_ended.json"
    cur = json.loads(p.read_text()) if p.exists() else {}
    for d in runs or list_runs(root):
        cur[RunDir(d).read_status()["job_id"]] = state
    p.write_text(json.dumps(cur))


def ledger(root: Path) -> list[dict]:
    p = root / ".submitit" / "fake_jobs.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_submit_creates_run_folders_and_is_idempotent(tmp_path, fake):
    root = tmp_path / "grid"
    rep = control.submit_grid(spec(), root=root, backend=fake())
    assert len(rep.submitted) == 4 and len(ledger(root)) == 4
    dirs = list_runs(root)
    assert [d.name.rsplit("-", 1)[0] for d in dirs] == ["can-s0", "can-s1", "mae-s0", "mae-s1"]
    for d in dirs:
        cfg = read_yaml(d / "config.yaml")
        assert cfg["extra"]["run_id"] == d.name.rsplit("-", 1)[1]
        st = RunDir(d).read_status()
        assert st["state"] == "pending" and st["executor"] == "fake" and st["job_ids"] == [st["job_id"]]
    # jobs still queued: a second submit submits nothing
    rep = control.submit_grid(spec(), root=root, backend=fake())
    assert rep.submitted == [] and len(rep.skipped["queued or running"]) == 4 and len(ledger(root)) == 4
    # done runs are skipped
    for d in dirs:
        RunDir(d).update_status("done")
    end_jobs(root)
    rep = control.submit_grid(spec(), root=root, backend=fake())
    assert rep.submitted == [] and len(rep.skipped["done"]) == 4


def test_failed_needs_retry_and_lost_jobs_resume(tmp_path, fake):
    root = tmp_path / "grid"
    control.submit_grid(spec(), root=root, backend=fake())
    d0, d1, d2, d3 = list_runs(root)
    RunDir(d0).update_status("failed", reason="boom", traceback="Traceback ...")
    RunDir(d1).update_status("running", step=1)  # its job then vanished without finishing: resumable
    RunDir(d2).update_status("done")
    end_jobs(root, "COMPLETED", [d0, d1, d2])
    end_jobs(root, "OUT_OF_MEMORY", [d3])  # a hard crash the job could not record
    rep = control.submit_grid(spec(), root=root, backend=fake())
    assert rep.submitted == [d1]
    assert RunDir(d3).read_status()["state"] == "failed" and "OUT_OF_MEMORY" in RunDir(d3).read_status()["reason"]
    assert rep.skipped["failed (use --retry-failed)"] == [d0, d3]
    rep = control.submit_grid(spec(), root=root, backend=fake(), retry_failed=True)
    assert rep.submitted == [d0, d3]
    st = RunDir(d0).read_status()
    assert st["state"] == "pending" and "reason" not in st and len(st["job_ids"]) == 2


def test_cancel_marks_cancelled_and_submit_resubmits_them(tmp_path, fake):
    root = tmp_path / "grid"
    control.submit_grid(spec(), root=root, backend=fake())
    RunDir(list_runs(root)[0]).update_status("done")
    cancelled = control.cancel_grid(root)
    assert len(cancelled) == 3
    df = control.status_grid(root)
    assert sorted(df["state"]) == ["cancelled"] * 3 + ["done"]
    # a cancelled job whose process still wrote "running" afterwards is still reported cancelled
    RunDir(cancelled[0]).update_status("running", step=3)
    assert control.reconcile([cancelled[0]])[cancelled[0]] == "cancelled"
    rep = control.submit_grid(spec(), root=root, backend=fake())
    assert sorted(rep.submitted) == sorted(cancelled)


def _racer(root: str, out: str) -> None:
    BACKENDS["fake"] = FakeBackend
    b = FakeBackend()
    b.delay_s = 0.5
    rep = control.submit_grid(spec(), root=root, backend=b)
    Path(out).write_text(str(len(rep.submitted)))


def test_grid_lock_prevents_double_submission(tmp_path, fake):
    root = tmp_path / "grid"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_racer, args=(str(root), str(tmp_path / f"n{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    counts = sorted(int((tmp_path / f"n{i}").read_text()) for i in range(2))
    assert counts == [0, 4]
    assert len(ledger(root)) == 4


def test_grid_lock_is_exclusive_across_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")

    def hold(path):
        with grid_lock(path):
            time.sleep(1.0)

    p = ctx.Process(target=hold, args=(str(tmp_path),))
    p.start()
    time.sleep(0.3)
    with pytest.raises(TimeoutError):
        with grid_lock(tmp_path, timeout_s=0.2):
            pass
    p.join()
    with grid_lock(tmp_path, timeout_s=1.0):
        pass


def test_status_table(tmp_path, fake):
    root = tmp_path / "grid"
    control.submit_grid(spec(), root=root, backend=fake())
    d0, d1, *_ = list_runs(root)
    (d0 / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n"
                                      + json.dumps({"step": 2, "loss": 1.25}) + "\n")
    RunDir(d0).update_status("done", step=2)
    (d0 / "summary.json").write_text(json.dumps({"final": {"loss": 1.3, "rec": 0.2}}))
    RunDir(d1).update_status("failed", reason="RuntimeError: x", traceback="tb")
    df = collect(root)
    assert list(df["run"]) == ["can-s0", "can-s1", "mae-s0", "mae-s1"]
    row = df.iloc[0]
    assert row["state"] == "done" and row["step"] == 2 and row["loss"] == 1.25 and row["final:rec"] == 0.2
    assert df.iloc[1]["reason"] == "RuntimeError: x"
    text = format_table(df)
    head = text.splitlines()[0].split()
    assert head == ["run", "state", "step", "loss", "job_id", "log"]
    assert "1.2500" in text and "4 runs: 2 pending, 1 done, 1 failed" in text


def test_slurm_executor_without_sbatch_points_to_local(tmp_path, monkeypatch):
    from canbench.slurm.executors import ExecutorError, SlurmBackend

    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ExecutorError, match=r"--executor local"):
        control.submit_grid(spec(), root=tmp_path, backend=SlurmBackend())
    assert not list_runs(tmp_path)  # nothing was prepared


def test_bad_grid_submits_nothing(tmp_path, fake):
    bad = spec(axes={"method.mask_rate": [0.5]})
    with pytest.raises(Exception, match=r"run 'can-mask_rate0.5-s0'.*method\.mask_rate"):
        control.submit_grid(bad, root=tmp_path / "g", backend=fake())
    assert not (tmp_path / "g").exists()
