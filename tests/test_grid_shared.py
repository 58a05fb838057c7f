"""Each distinct run config trains once per run store: grids that name the same config (differing only in the
run record: grid, name, axes, suites) share one training and each evaluates it with its own suites."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_grid_runstore import FakeBackend

from canbench.reports.collect import collect_pretrain
from canbench.rundir import RunDir
from canbench.slurm import control
from canbench.slurm.executors import BACKENDS
from canbench.slurm.grid import parse_spec
from canbench.slurm.job import RunJob
from canbench.slurm.runstore import claimant, prepare_run, training_key
from canbench.train.trainer import Trainer

TINY = {"optim.max_steps": 2, "data.builtin_size": 128, "optim.batch_size": 16, "train.log_every": 1}
EVAL = {"data.test_size": 100, "knn.k": 5}


def grid(name: str, **kw) -> dict:
    d = {"name": name, "benchmark": "smoke", "methods": ["can"], "seeds": [0], "suites": ["knn"],
         "scales": {"smoke": {"preset": "smoke", "overrides": dict(TINY), "eval": dict(EVAL)}}}
    d.update(kw)
    return d


@pytest.fixture
def fits(monkeypatch) -> list[Path]:
    """The run folders Trainer.fit trained, in order (the debug executor runs jobs in this process)."""
    calls: list[Path] = []
    orig = Trainer.fit

    def counting(self, *a, **kw):
        calls.append(self.run_dir)
        return orig(self, *a, **kw)

    monkeypatch.setattr(Trainer, "fit", counting)
    return calls


def test_two_grids_naming_one_config_train_it_once_and_both_report_it(tmp_path: Path, fits) -> None:
    store = tmp_path / "runs"
    a = parse_spec(grid("ga"))
    # grid gb: the same CAN config under another name and grid, no suites (like Table 4), plus a run of its own
    b = parse_spec(grid("gb", methods=["can", "mae"], suites=[], axes={"zip": {"variant": ["full"]}}))
    rep_a = control.submit_grid(a, executor="debug", root=store / "ga", store=store)
    rep_b = control.submit_grid(b, executor="debug", root=store / "gb", store=store)
    can_a = store / "ga" / rep_a.runs[0].folder_name
    can_b, mae_b = (store / "gb" / r.folder_name for r in rep_b.runs)
    assert [p.name for p in fits] == [can_a.name, mae_b.name]  # gb's CAN was not trained again
    assert rep_b.runs[0].run_id != rep_a.runs[0].run_id  # its own run (record), one training
    assert training_key(RunDir(can_a).read_config()) == training_key(RunDir(can_b).read_config())
    assert can_b not in rep_b.submitted and mae_b in rep_b.submitted  # nothing to evaluate: no job at all

    sa, sb = RunDir(can_a).read_summary(), RunDir(can_b).read_summary()
    assert sb["run_id"] == rep_b.runs[0].run_id and sa["run_id"] == rep_a.runs[0].run_id
    assert sb["trained_in"] == str(can_a.resolve()) and "trained_in" not in sa
    assert sb["final"] == sa["final"] and sb["checkpoint_sha256"] == sa["checkpoint_sha256"]
    assert RunDir(can_b).last_checkpoint.stat().st_ino == RunDir(can_a).last_checkpoint.stat().st_ino  # linked
    assert RunDir(can_b).read_metrics() == RunDir(can_a).read_metrics()
    assert all(RunDir(d).state == "done" for d in (can_a, can_b, mae_b))
    assert RunDir(can_a).result_path("knn").is_file() and not RunDir(can_b).result_path("knn").exists()

    # the reports see both grids' runs, each under its own grid and run id, with the shared final losses
    df = collect_pretrain(store).set_index("run_id")
    assert {rep_a.runs[0].run_id, rep_b.runs[0].run_id, rep_b.runs[1].run_id} <= set(df.index)
    assert df.loc[rep_b.runs[0].run_id, "grid_name"] == "gb" and df.loc[rep_a.runs[0].run_id, "grid_name"] == "ga"

    # submitting both again is a no-op: nothing trains, nothing is submitted
    n = len(fits)
    assert control.submit_grid(a, executor="debug", root=store / "ga", store=store).submitted == []
    assert control.submit_grid(b, executor="debug", root=store / "gb", store=store).submitted == []
    assert len(fits) == n


def test_a_twin_job_adopts_the_training_its_twin_finished_first(tmp_path: Path, fits) -> None:
    """The job-time path (local jobs of two grids started together): whichever job takes the store's lock for the
    training key trains; the other finds it trained and adopts it, then runs its own suites."""
    store = tmp_path / "store"
    runs = []
    for name in ("ga", "gb"):
        from canbench.slurm.grid import expand

        r = expand(parse_spec(grid(name)), "smoke")[0]
        d = prepare_run(store / name, r.folder_name, r.cfg.to_dict())
        RunDir(d).update_status(None, train_store=str(store))
        runs.append(d)
    first, second = (RunJob(d)() for d in runs)
    assert fits == [runs[0]] and first["state"] == second["state"] == "done"
    assert RunDir(runs[1]).read_summary()["trained_in"] == str(runs[0])
    assert claimant(store, training_key(RunDir(runs[0]).read_config())) == runs[0]
    assert RunDir(runs[1]).result_path("knn").is_file()  # its own evaluation
    m1, m2 = (dict(r["suites"]["knn"]["metrics"]) for r in (first, second))
    m1.pop("elapsed_s"), m2.pop("elapsed_s")
    assert m2 == m1 and "top1" in m1  # the same encoder under the same protocol


class SlurmLike(FakeBackend):
    name = "slurm"


def test_on_slurm_a_twin_waits_for_the_training_in_progress_instead_of_holding_an_allocation(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS, "fake", FakeBackend)
    store = tmp_path / "runs"
    a, b = parse_spec(grid("ga")), parse_spec(grid("gb", suites=["knn", "linear"]))
    rep_a = control.submit_grid(a, executor="fake", root=store / "ga", store=store, backend=FakeBackend())
    assert len(rep_a.submitted) == 1  # queued, not trained yet
    rep_b = control.submit_grid(b, executor="fake", root=store / "gb", store=store, backend=SlurmLike())
    assert rep_b.submitted == []
    (reason, folders), = rep_b.skipped.items()
    assert reason.startswith("waits for the same training in ") and str(rep_a.submitted[0]) in reason
    assert folders == [store / "gb" / rep_b.runs[0].folder_name]


def test_grid_submit_store_flag_shares_a_training_between_roots_with_different_parents(tmp_path: Path, fits) -> None:
    import yaml

    from canbench.cli import main

    store = tmp_path / "store"
    for name in ("ga", "gb"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(grid(name)))
        assert main(["grid", "submit", str(tmp_path / f"{name}.yaml"), "--executor", "debug",
                     "--root", str(tmp_path / name / "runs"), "--store", str(store)]) == 0
    (a,), (b,) = (list((tmp_path / n / "runs").glob("can-s0-*")) for n in ("ga", "gb"))
    assert fits == [a] and RunDir(b).read_summary()["trained_in"] == str(a)
    assert RunDir(b).state == "done" and RunDir(b).result_path("knn").is_file()  # evaluated, not trained


def test_a_twin_with_the_same_evaluation_settings_reuses_its_up_to_date_results(tmp_path: Path, fits,
                                                                               monkeypatch) -> None:
    """Same config and same evaluation settings: gb's kNN result is the one ga computed (the runner found it up to
    date); a suite ga did not run (linear) is computed for gb."""
    from canbench.evaluation import runner

    ran: list[tuple[str, str]] = []
    orig = runner.evaluate

    def spy(source, suites, *a, **kw):
        out = orig(source, suites, *a, **kw)
        ran.extend((Path(r["path"]).parent.parent.name, s) for s, r in out.items() if not r["skipped"])
        return out

    monkeypatch.setattr(runner, "evaluate", spy)
    store = tmp_path / "runs"
    ev = {"preset": "smoke", "overrides": dict(TINY), "eval": dict(EVAL, **{"linear.batch_size": 32})}
    a, b = parse_spec(grid("ga", scales={"smoke": ev})), parse_spec(grid("gb", suites=["knn", "linear"],
                                                                       scales={"smoke": ev}))
    ra = control.submit_grid(a, executor="debug", root=store / "ga", store=store).runs[0]
    rb = control.submit_grid(b, executor="debug", root=store / "gb", store=store).runs[0]
    assert len(fits) == 1 and ran == [(ra.folder_name, "knn"), (rb.folder_name, "linear")]
    ka, kb = (RunDir(store / g / r.folder_name).result_path("knn") for g, r in (("ga", ra), ("gb", rb)))
    assert kb.read_text() == ka.read_text()
    # another evaluation setting: the copied result would not match, so it is not offered, and gb2 computes its own
    c = parse_spec(grid("gb2", scales={"smoke": {"preset": "smoke", "overrides": dict(TINY),
                                                 "eval": dict(ev["eval"], **{"knn.k": 3})}}))
    rc = control.submit_grid(c, executor="debug", root=store / "gb2", store=store).runs[0]
    assert len(fits) == 1 and ran[-1] == (rc.folder_name, "knn")


def test_training_lock_is_exclusive_and_a_cancelled_waiter_gives_up(tmp_path: Path) -> None:
    from canbench.slurm.runstore import training_lock

    with training_lock(tmp_path, "k") as held:
        assert held is True
        with training_lock(tmp_path, "k", stop=lambda: True) as other:  # held elsewhere: a stopped waiter leaves
            assert other is False
    with training_lock(tmp_path, "k", stop=lambda: True) as again:  # released: taken at once
        assert again is True
