"""Core units: atomic writes, tolerant reads, file locks, status files, fingerprint mismatches."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from canbench.fingerprint import INFORMATIONAL, mismatches, protocol_fingerprint
from canbench.io import append_jsonl, atomic_path, file_lock, read_json, read_jsonl, write_json, write_text
from canbench.rundir import STATES, RunDir, find_runs

# ---- atomic writes ---------------------------------------------------------------------------------------------

def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    write_json(p, {"a": 1})
    write_json(p, {"a": 2, "b": [1, 2]})
    assert read_json(p) == {"a": 2, "b": [1, 2]}
    assert sorted(os.listdir(p.parent)) == ["x.json"]  # no .x.json.*.tmp left behind


def test_a_crash_while_writing_keeps_the_previous_file(tmp_path):
    p = tmp_path / "result.json"
    write_json(p, {"top1": 50.0})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(p) as tmp:
            tmp.write_text('{"top1": 9')  # half a file
            raise RuntimeError("disk full")
    assert read_json(p) == {"top1": 50.0}  # readers never see the torn write
    assert os.listdir(tmp_path) == ["result.json"]


def test_failing_serialisation_writes_nothing(tmp_path):
    p = tmp_path / "t.txt"
    write_text(p, "old")

    class Boom:
        def __str__(self):
            raise ValueError("cannot render")

    with pytest.raises(ValueError, match="cannot render"):
        write_json(p, {"x": Boom()})  # json's default=str calls __str__ before anything is written
    assert p.read_text() == "old"


def test_jsonl_appends_whole_lines_and_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    for i in range(3):
        append_jsonl(p, {"step": i})
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-line
    assert [r["step"] for r in read_jsonl(p)] == [0, 1, 2]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_file_lock_excludes_and_times_out(tmp_path):
    lock = tmp_path / ".lock"
    order = []

    def other():
        with file_lock(lock):
            order.append("other")

    with file_lock(lock):
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.2)
        order.append("first")  # the other thread is still waiting for the lock
        with pytest.raises(TimeoutError, match="could not lock"):
            with file_lock(lock, timeout_s=0.1):
                pass
    t.join(5)
    assert order == ["first", "other"]


# ---- status files ----------------------------------------------------------------------------------------------

def test_status_defaults_to_pending_and_survives_garbage(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read_status() == {"state": "pending"} and run.state == "pending"
    run.status_path.parent.mkdir(parents=True)
    run.status_path.write_text("{torn")
    assert run.read_status() == {"state": "pending"}
    run.status_path.write_text("[1, 2]")  # JSON, but not a mapping
    assert run.read_status() == {"state": "pending"}


def test_status_keeps_fields_and_clears_failure_on_success(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_status("running", job_id="7", step=3)
    run.write_status("failed", reason="OOM", traceback="Traceback ...")
    st = run.read_status()
    assert (st["state"], st["job_id"], st["reason"]) == ("failed", "7", "OOM")
    st = run.write_status("running", step=4)
    assert st["job_id"] == "7" and "reason" not in st and "traceback" not in st and st["step"] == 4
    assert json.loads(run.status_path.read_text())["state"] == "running"
    with pytest.raises(ValueError, match="status state 'finished' is not one of"):
        run.write_status("finished")
    assert "finished" not in STATES


def test_update_status_is_a_locked_read_modify_write(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_status("running")

    def bump(i):
        run.update_status(None, **{f"k{i}": i})

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    st = run.read_status()
    assert st["state"] == "running" and all(st[f"k{i}"] == i for i in range(8))  # no update lost


def test_run_dir_paths_and_find_runs(tmp_path):
    run = RunDir(tmp_path / "a" / "run1")
    assert run.result_path("knn") == run.path / "eval" / "knn.json"
    assert run.finetuned_path == run.path / "finetune" / "finetuned.pt"
    with pytest.raises(ValueError, match="becomes a file name"):
        run.result_path("../x")
    run.write_config({"method": {"name": "can"}, "extra": {"run_name": "can-s0", "axes": {"seed": 0}}})
    (run.eval_dir).mkdir()
    (run.eval_dir / "config.yaml").write_text("method: {name: mae}\n")  # never a run folder inside a run
    assert find_runs(tmp_path) == [run] and run.record().run_name == "can-s0"
    assert run.record().axes == {"seed": 0}
    with pytest.raises(FileNotFoundError):
        find_runs(tmp_path / "missing")


def test_keep_metrics_until_drops_lines_after_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    for s in (1, 2, 3, 4):
        append_jsonl(run.metrics_path, {"step": s, "loss": 1.0 / s})
    run.keep_metrics_until(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


# ---- fingerprints ----------------------------------------------------------------------------------------------

def test_mismatches_name_the_fields_that_differ():
    a = {"epochs": 100, "dataset": "in1k", "pooling": "avg", "torch": "2.4", "code_version": "x"}
    b = {"epochs": 90, "dataset": "in1k", "pooling": "avg", "torch": "2.5", "code_version": "y"}
    assert mismatches(a, b) == {"epochs": (100, 90)}  # library versions and code are recorded, not matched
    assert mismatches(a, {**b, "epochs": 100}) == {}
    assert mismatches(a, {"epochs": 100}) == {"dataset": ("in1k", None), "pooling": ("avg", None)}
    assert mismatches(a, b, keys=["torch"]) == {"torch": ("2.4", "2.5")}  # explicit keys are always compared
    assert mismatches({"x": 1}, {"x": 1.0}) == {}  # JSON numbers compare by value


def test_protocol_fingerprint_adds_the_environment():
    fp = protocol_fingerprint(method="can", epochs=1)
    assert fp["method"] == "can" and fp["epochs"] == 1
    assert {"code_version", "torch", "timm", "device_type", "device_count"} <= set(fp)
    assert {"code_version", "torch", "timm", "device_type"} <= INFORMATIONAL
