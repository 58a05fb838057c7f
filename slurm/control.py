"""Grid commands as functions: submit (idempotent), status, cancel, wait.

``submit_grid`` expands and validates every run first (nothing is submitted if any run is bad),
then, holding the grid lock, reconciles each run folder with its recorded job and submits only
what needs to run: new runs, runs whose job is gone before they finished (they resume from their
last checkpoint), cancelled runs, and failed runs only with ``retry_failed``. Done runs and runs
whose job is still queued or running are skipped.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canbench.rundir import RunDir

from .executors import BACKENDS, FAILED_STATES, Backend, JobState, Submitted, get_backend
from .grid import GridSpec, Run, expand_all, load_spec, split_overrides
from .runstore import (
    adopt_training,
    claim_training,
    claimant,
    collect,
    default_root,
    grid_lock,
    is_trained,
    list_runs,
    prepare_run,
    trained_twin,
    training_key,
)

log = logging.getLogger("canbench.grid")

ACTIVE, NEW, RESUMABLE = "active", "new", "resumable"


@dataclass
class SubmitReport:
    """What ``submit_grid`` decided, per run folder."""

    root: Path
    runs: list[Run]
    submitted: list[Path] = field(default_factory=list)
    skipped: dict[str, list[Path]] = field(default_factory=dict)  # reason -> folders
    jobs: list[Submitted] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.submitted)} submitted"]
        parts += [f"{len(v)} {k}" for k, v in sorted(self.skipped.items()) if v]
        return f"{len(self.runs)} runs under {self.root}: " + ", ".join(parts)


def _log_tail(path: str | None, within: Path, n: int = 20) -> str:
    """The last ``n`` lines of a job's log, read only when the log lies inside the run store ``within``: the path
    comes from status.json, which may have been written by someone else, and the tail is written back into it."""
    if not path:
        return ""
    try:
        Path(path).resolve().relative_to(Path(within).resolve())
    except (ValueError, OSError):
        return ""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _mark_interrupted(d: Path, why: str) -> None:
    """Status ``interrupted`` (what it was is kept in ``was``): the run is dead, not running or queued."""
    run = RunDir(d)
    with run.status_lock():
        st = run.read_status()
        if st.get("state") in ("done", "failed", "cancelled", "interrupted") or run.owner() is not None:
            return
        run.write_status("interrupted", was=st.get("state"),
                         reason=f"{why}; `grid submit` resumes it from its last checkpoint")


def _mark_evaluation_lost(d: Path) -> bool:
    """A grid run trained (``done`` at phase ``trained``) whose job ended before its evaluation: ``interrupted``,
    so the next ``grid submit`` evaluates it (training is not repeated: its checkpoint is final). False when
    the status moved on meanwhile."""
    run = RunDir(d)
    with run.status_lock():
        st = run.read_status()
        if st.get("state") != "done" or st.get("phase") != "trained" or run.owner() is not None:
            return False
        run.write_status("interrupted", was="done", phase="eval",
                         reason="its training finished but its job ended before the evaluation; `grid submit` "
                                "runs the evaluation")
        return True


def reconcile(run_dirs: list[Path]) -> dict[Path, str]:
    """Bring each run's status in line with its job and classify it.

    Returns folder -> one of ``done``, ``failed``, ``cancelled`` (as recorded), ``active`` (its job
    is queued or running, or a live process owns the run folder: :meth:`RunDir.owner`), ``new`` (never
    submitted) or ``resumable`` (its job is gone and no process owns the folder before the run finished: it is
    marked ``interrupted`` and continues from its checkpoint). A job that ended as CANCELLED, or after a
    ``grid cancel``, makes the run ``cancelled``; one that ended FAILED / TIMEOUT / OUT_OF_MEMORY /
    NODE_FAIL makes it ``failed`` with the scheduler's state and the log's tail as reason.
    """
    statuses = {d: RunDir(d).read_status() for d in run_dirs}
    by_exec: dict[str, list[Path]] = {}
    for d, st in statuses.items():
        if st.get("state") in ("pending", "running", "interrupted") and st.get("job_id") and st.get("executor"):
            by_exec.setdefault(st["executor"], []).append(d)
    job_states: dict[Path, JobState] = {}
    for name, dirs in by_exec.items():
        if name not in BACKENDS:  # cannot ask: assume the job lives rather than risk running it twice
            log.warning("runs %s were submitted with an unknown executor %r; treated as active",
                        ", ".join(d.name for d in dirs), name)
            job_states.update({d: JobState(True, "UNKNOWN", f"unknown executor {name!r}") for d in dirs})
            continue
        for d, js in zip(dirs, get_backend(name).states([statuses[d] for d in dirs])):
            job_states[d] = js
    out: dict[Path, str] = {}
    for d, st in statuses.items():
        state = st.get("state", "pending")
        if state == "done" and st.get("phase") == "trained" and st.get("job_id"):
            # its trainer finished, but the grid job never got to "finished" (killed between training and the
            # evaluation): the suites still have to run, unless a live process is at it
            if RunDir(d).owner() is not None:
                out[d] = ACTIVE
                continue
            if _mark_evaluation_lost(d):
                out[d] = RESUMABLE
                continue
            state = RunDir(d).state
        if state in ("done", "failed", "cancelled"):
            out[d] = state
            continue
        if RunDir(d).owner() is not None:  # a live process trains it, whatever became of the job that started it
            out[d] = ACTIVE
            continue
        js = job_states.get(d)
        if not st.get("job_id") or js is None:  # never submitted (or a job id without an executor)
            if state == "running":  # a trainer (e.g. `canbench pretrain`) wrote running, and no process owns it
                _mark_interrupted(d, "no process owns the run folder (its trainer was killed or lost)")
            out[d] = NEW if state == "pending" else RESUMABLE
            continue
        if js.alive:
            out[d] = ACTIVE
            continue
        if st.get("cancel_requested") or js.state.startswith("CANCELLED"):
            RunDir(d).update_status("cancelled", reason=f"job {st['job_id']} was cancelled ({js.detail})")
            out[d] = "cancelled"
        elif js.state in FAILED_STATES:
            tail = _log_tail(st.get("log_err"), d.parent) or _log_tail(st.get("log_out"), d.parent)
            RunDir(d).update_status("failed", reason=f"job {st['job_id']} ended as {js.state} before the run finished",
                          traceback=tail)
            out[d] = "failed"
        else:  # the job exited without finishing this run (stopped, killed, lost): resume it
            if state != "interrupted":
                _mark_interrupted(d, f"job {st['job_id']} is gone ({js.detail}) and no process owns the run folder")
            out[d] = RESUMABLE
    return out


def _record_submission(d: Path, sub: Submitted, backend: Backend, folder: Path, job_name: str) -> None:
    run = RunDir(d)
    with run.status_lock():
        st = run.read_status()
        state = st.get("state") if st.get("state") in ("running", "done") and st.get("job_id") == sub.job_id \
            else "pending"
        history = list(st.get("job_ids") or [])
        if sub.job_id not in history:
            history.append(sub.job_id)
        extra = {"phase": "queued"} if state == "pending" else {}
        run.write_status(state, job_id=sub.job_id, job_ids=history, executor=backend.name, job_name=job_name,
                     submitit_folder=str(folder), log_out=sub.log_out, log_err=sub.log_err, submitted=time.time(),
                     cancel_requested=None, pid_submitter=os.getpid(), **extra)


def plan(spec: GridSpec, scale: str, overrides: list[str] | None = None, executor: str = "local",
         root: str | Path | None = None) -> tuple[list[Run], Path, Any]:
    """Expand + validate (every scale; data paths for ``scale``): (runs, root, resources)."""
    _, res_over = split_overrides(overrides or [])
    res = spec.resources(scale, res_over)
    world = 1 if executor == "debug" else res.world_size
    runs = expand_all(spec, scale, overrides, world_size=world)
    root = Path(root) if root is not None else default_root(spec.name, scale)
    return runs, root, res


def default_store(root: str | Path | None) -> Path:
    """Where grids share trainings: ``runs`` for the default roots (``runs/<grid>/<scale>``), else the grid root
    itself — nothing is written outside a root the user named; ``--store`` widens it (the demo passes its
    ``runs/demo`` for its grids under ``runs/demo/<grid>``)."""
    return Path("runs") if root is None else Path(root)


def _share_training(d: Path, store: Path, backend: Backend) -> str | None:
    """Before submitting run ``d``: adopt a twin's finished training (same config but for ``extra``) now; or, on
    an executor whose jobs hold an allocation (SLURM), defer while a twin's job trains it. Returns the skip
    reason when deferred, None to submit (a local or debug job waits for a training twin, then adopts)."""
    run = RunDir(d)
    run.update_status(None, train_store=str(store.resolve()))  # before the job starts: it looks for twins there
    if is_trained(d):
        return None
    cfg = run.read_config() or {}
    key = training_key(cfg)
    twin = trained_twin(store, key, exclude=d)
    if twin is not None:
        adopt_training(twin, d)
        if not (cfg.get("extra") or {}).get("suites"):  # nothing to evaluate: no job needed
            run.update_status("done", phase="finished", step=(run.read_summary() or {}).get("steps"),
                              finished=time.time())
            return f"done: trained once already, in {twin}"
        log.info("%s: trained once already, in %s; submitted for its evaluation only", d.name, twin)
        return None
    owner = claimant(store, key)
    if owner is not None and owner.resolve() != d.resolve():
        st = RunDir(owner).read_status()
        if backend.name == "slurm" and st.get("state") in ("pending", "running") and st.get("job_id"):
            return f"waits for the same training in {owner} (submit again when it is done)"
        return None
    claim_training(store, key, d)
    return None


COMMANDS_FILE = "commands.jsonl"  # in a grid root: one line per submission (the report's provenance page)


def record_command(root: Path, grid: str, scale: str, executor: str, overrides: list[str] | None) -> None:
    """Append the command line that submitted this grid (argv, folder, time, code version) to its root."""
    from canbench.fingerprint import code_version
    from canbench.io import append_jsonl

    append_jsonl(Path(root) / COMMANDS_FILE, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(["canbench", *sys.argv[1:]])
        if Path(sys.argv[0]).name in ("canbench", "__main__.py") else shlex.join(sys.argv),
        "cwd": os.getcwd(), "grid": grid, "scale": scale, "executor": executor, "overrides": list(overrides or []),
        "code_version": code_version()})


def submit_grid(spec: GridSpec | str | Path, scale: str = "smoke", executor: str = "local",
                root: str | Path | None = None, overrides: list[str] | None = None, retry_failed: bool = False,
                wait: bool = False, backend: Backend | None = None, poll_s: float | None = None,
                store: str | Path | None = None) -> SubmitReport:
    """Submit what is not done or running; idempotent and safe against a concurrent submit.

    ``store`` (default :func:`default_store`): run folders of any grid under it share a training when their
    configs differ only in the run record, so each distinct config trains once (:mod:`.runstore`)."""
    spec = spec if isinstance(spec, GridSpec) else load_spec(spec)
    backend = backend or get_backend(executor)
    backend.check()
    store = Path(store) if store is not None else default_store(root)
    runs, root, res = plan(spec, scale, overrides, backend.name, root)
    backend.check_resources(res)
    report = SubmitReport(root=root, runs=runs)
    with grid_lock(root):
        dirs = [prepare_run(root, r.folder_name, r.cfg.to_dict()) for r in runs]
        record_command(root, spec.name, scale, backend.name, overrides)
        kinds = reconcile(dirs)
        todo = []
        for d in dirs:
            kind = kinds[d]
            if kind in (NEW, RESUMABLE, "cancelled") or (kind == "failed" and retry_failed):
                deferred = _share_training(d, store, backend)
                if deferred is not None:
                    report.skipped.setdefault(deferred, []).append(d)
                else:
                    todo.append(d)
            else:
                reason = {"failed": "failed (use --retry-failed)", ACTIVE: "queued or running"}.get(kind, kind)
                report.skipped.setdefault(reason, []).append(d)
        if todo:
            folder = (root / ".submitit" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            job_name = f"{spec.name}-{scale}"
            subs = backend.submit(todo, res, folder, job_name=job_name)
            for d, sub in zip(todo, subs):
                _record_submission(d, sub, backend, folder, job_name)
            report.submitted, report.jobs = todo, subs
            log.info("submitted %d runs of %s (%s) with --executor %s: jobs %s", len(todo), spec.name, scale,
                     backend.name, ", ".join(dict.fromkeys(s.job_id for s in subs)))
    if report.jobs:
        backend.wait_inline(report.jobs)
    if wait:
        wait_grid(root, poll_s=poll_s if poll_s is not None else backend.poll_s)
    return report


def wait_grid(root: str | Path, poll_s: float = 2.0, timeout_s: float | None = None) -> dict[Path, str]:
    """Block until no run under ``root`` has a live job; returns the final classification."""
    t0 = time.monotonic()
    while True:
        with grid_lock(root):
            kinds = reconcile(list_runs(root))
        if not any(k == ACTIVE for k in kinds.values()):
            return kinds
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"runs under {root} still active after {timeout_s:.0f} s")
        time.sleep(poll_s)


def status_grid(root: str | Path):
    """Reconcile, then the aggregate pandas table of every run folder under ``root``."""
    if Path(root).is_dir():
        with grid_lock(root):
            reconcile(list_runs(root))
    return collect(root)


def _stop_owners(dirs: list[Path], wait_s: float = 15.0) -> None:
    """SIGTERM to the process that still owns each run folder on this host (one whose job is gone, e.g. an
    orphaned trainer); it stops after its current step. Waits up to ``wait_s`` for the folders to be free."""
    import signal
    import socket

    pids = set()
    for d in dirs:
        info = RunDir(d).owner()
        pid = (info or {}).get("pid")
        if isinstance(pid, int) and pid != os.getpid() and info.get("host") == socket.gethostname():
            try:
                os.kill(pid, signal.SIGTERM)
                pids.add(pid)
            except OSError:
                pass
    deadline = time.monotonic() + wait_s
    while pids and any(RunDir(d).owner() is not None for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.1)


def cancel_grid(root: str | Path) -> list[Path]:
    """Cancel every queued or running job of the runs under ``root``; they are marked cancelled."""
    cancelled: list[Path] = []
    if not Path(root).is_dir():
        return cancelled
    with grid_lock(root):
        dirs = list_runs(root)
        kinds = reconcile(dirs)
        active = [d for d in dirs if kinds[d] == ACTIVE]
        by_exec: dict[str, list[Path]] = {}
        for d in active:
            by_exec.setdefault(RunDir(d).read_status().get("executor"), []).append(d)
        for name, ds in by_exec.items():
            now = time.time()
            for d in ds:  # mark first: a run that ends while being cancelled still counts as cancelled
                RunDir(d).update_status(None, cancel_requested=now)
            if name in BACKENDS:
                get_backend(name).cancel([RunDir(d).read_status() for d in ds])
            _stop_owners(ds)
            for d in ds:
                RunDir(d).update_status("cancelled", reason="cancelled by `canbench grid cancel`", cancel_requested=now)
            cancelled += ds
    return cancelled


__all__ = ["SubmitReport", "cancel_grid", "default_store", "plan", "reconcile", "status_grid", "submit_grid",
           "wait_grid"]
