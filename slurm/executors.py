"""Executors: slurm (job arrays), local (this machine) and debug (in-process), one code path.

Each backend submits :class:`~canbench.slurm.job.RunJob` callables through submitit and answers,
from any later process, whether a recorded job is still alive (squeue/sacct for SLURM, the
process for local and debug) and cancels it. The registry is an explicit dict (:data:`BACKENDS`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from canbench.config import ConfigError

from .grid import Resources
from .job import ChainJob, RunJob

log = logging.getLogger("canbench.grid")

# SLURM job states in which the job may still run (or be requeued); everything else is final.
SLURM_LIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "COMPLETING",
                        "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
FAILED_STATES = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
GRACE_S = 120.0  # a just-submitted job that no tool knows yet is taken as alive for this long


class ExecutorError(ConfigError):
    """The executor cannot be used here (e.g. no sbatch); the message says what to do instead."""


@dataclass
class JobState:
    """What the scheduler (or the OS) says about one job."""

    alive: bool
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, EXITED, UNKNOWN, ...
    detail: str = ""


@dataclass
class Submitted:
    """One submitted job as recorded in the run's status.json."""

    job_id: str
    log_out: str
    log_err: str
    handle: Any = field(default=None, repr=False)  # the submitit Job, in the submitting process only


class Backend:
    """Interface: ``submit``, ``states``, ``cancel``; ``wait_inline`` runs in-process jobs."""

    name = "base"
    poll_s = 2.0

    def check(self) -> None:
        """Raise ExecutorError when this executor cannot submit from here."""

    def check_resources(self, res: Resources) -> None:
        """Raise ExecutorError when this executor cannot provide ``res``."""

    def submit(self, run_dirs: list[Path], res: Resources, folder: Path, job_name: str) -> list[Submitted]:
        raise NotImplementedError

    def states(self, status: list[dict[str, Any]]) -> list[JobState]:
        raise NotImplementedError

    def cancel(self, status: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def wait_inline(self, submitted: list[Submitted]) -> None:
        """Nothing to do for executors whose jobs run on their own."""


def _common_parameters(res: Resources, job_name: str) -> dict[str, Any]:
    p: dict[str, Any] = {"name": job_name, "timeout_min": int(res.timeout_min), "nodes": int(res.nodes),
                         "tasks_per_node": res.ntasks_per_node, "cpus_per_task": int(res.cpus_per_task)}
    if res.gpus_per_node:
        p["gpus_per_node"] = int(res.gpus_per_node)
    if res.mem_gb is not None:
        p["mem_gb"] = res.mem_gb
    return p


class SlurmBackend(Backend):
    """``submitit.AutoExecutor(cluster="slurm")``; a grid is one job array (``executor.batch()``)."""

    name = "slurm"
    poll_s = 3.0

    def check(self) -> None:
        if shutil.which("sbatch") is None:
            raise ExecutorError("--executor slurm: `sbatch` is not on PATH, so this machine cannot submit to SLURM. "
                                "Run the grid on this machine with --executor local (or in-process with "
                                "--executor debug), or start the local test cluster with slurm/cluster.sh up.")

    def submit(self, run_dirs: list[Path], res: Resources, folder: Path, job_name: str) -> list[Submitted]:
        self.check()
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=int(res.max_num_timeout))
        params = _common_parameters(res, job_name)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(res, key):
                params[f"slurm_{key}"] = getattr(res, key)
        params["slurm_array_parallelism"] = int(res.slurm_array_parallelism)
        params["slurm_signal_delay_s"] = int(res.signal_delay_s)
        if res.additional:
            params["slurm_additional_parameters"] = dict(res.additional)
        ex.update_parameters(**params)
        with ex.batch():
            jobs = [ex.submit(RunJob(d)) for d in run_dirs]
        return [Submitted(j.job_id, str(j.paths.stdout), str(j.paths.stderr), j) for j in jobs]

    def states(self, status: list[dict[str, Any]]) -> list[JobState]:
        ids = [str(s.get("job_id")) for s in status]
        known = _squeue([i for i in ids if i and i != "None"])
        missing = [i for i in ids if i not in known]
        if missing:
            known.update(_sacct(missing))
        out = []
        for s, i in zip(status, ids):
            state, name = known.get(i, (None, None))
            if state is not None and s.get("job_name") and name and name != s["job_name"]:
                # job ids restart when a cluster's state is wiped: this id now belongs to another job
                state = None
            if state is None:
                young = time.time() - float(s.get("submitted", 0)) < GRACE_S
                out.append(JobState(alive=young, state="UNKNOWN",
                                    detail="not yet known to SLURM" if young else "unknown to squeue and sacct"))
            else:
                base = state.split()[0].rstrip("+")  # "CANCELLED by 0" -> CANCELLED
                out.append(JobState(alive=base in SLURM_LIVE, state=base, detail=state))
        return out

    def cancel(self, status: list[dict[str, Any]]) -> None:
        ids = sorted({str(s["job_id"]) for s in status if s.get("job_id")})
        if ids:
            subprocess.run(["scancel", *ids], check=False, capture_output=True, text=True, timeout=60)


def _run(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", cmd[0], exc)
        return ""
    if r.returncode != 0:
        log.debug("%s: %s", " ".join(cmd), r.stderr.strip())
        return ""
    return r.stdout


def _squeue(ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id (``123`` or ``123_4``) -> (state, job name), for jobs slurmctld still holds."""
    if not ids or shutil.which("squeue") is None:
        return {}
    bases = sorted({i.split("_")[0] for i in ids})
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T|%j", "-j", ",".join(bases)])
    states = {}
    for line in out.splitlines():
        jid, st, name = (line.strip().split("|", 2) + ["", ""])[:3]
        if jid:
            states[jid] = (st, name)
    return {i: states[i] for i in ids if i in states}


def _sacct(ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (final or current state, job name) from the accounting database."""
    if not ids or shutil.which("sacct") is None:
        return {}
    bases = sorted({i.split("_")[0] for i in ids})
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,JobName", "-j", ",".join(bases)])
    from submitit.slurm.slurm import read_job_id

    states: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        jid, state, name = (line.strip().split("|", 2) + ["", ""])[:3]
        entry = (state, name)
        if not jid or "." in jid:
            continue
        try:
            for parts in read_job_id(jid):
                if len(parts) >= 3:
                    for k in range(int(parts[1]), int(parts[2]) + 1):
                        states[f"{parts[0]}_{k}"] = entry
                else:
                    states["_".join(parts[:2])] = entry
        except Exception:  # noqa: BLE001 - odd ids are skipped, their state stays unknown
            continue
    return {i: states[i] for i in ids if i in states}


def _pid_alive(pid: int, needle: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, its command line contains ``needle``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if needle is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle.encode() not in f.read():
                    return False
        return True
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return needle is None


def local_lanes(n_runs: int, n_jobs: int) -> list[int]:
    """The local job (0 .. n_jobs-1) of each run, in snake order 0, 1, .., n-1, n-1, .., 0, 0, 1, ..: a grid
    listed seed by seed (seed 0 of every method carrying the costly suites) does not pile onto one job."""
    lanes = [k % (2 * n_jobs) for k in range(n_runs)]
    return [x if x < n_jobs else 2 * n_jobs - 1 - x for x in lanes]


def local_threads(cpus_per_task: int, n_jobs: int, cpu_count: int) -> int | None:
    """Torch threads of each of ``n_jobs`` concurrent local jobs: ``cpus_per_task`` (as SLURM would give),
    at most an equal share of the machine; None (torch's default) for a single job."""
    if n_jobs <= 1:
        return None
    return max(1, min(int(cpus_per_task), cpu_count // n_jobs))


class LocalBackend(Backend):
    """``submitit.AutoExecutor(cluster="local")``: runs are chained into ``local_parallelism`` jobs."""

    name = "local"
    poll_s = 1.0

    def check_resources(self, res: Resources) -> None:
        if int(res.nodes) > 1:
            raise ExecutorError(f"--executor local runs on one node, but the grid asks for nodes={res.nodes}; "
                                "pass --set slurm.nodes=1 (and slurm.gpus_per_node / slurm.tasks_per_node)")

    def submit(self, run_dirs: list[Path], res: Resources, folder: Path, job_name: str) -> list[Submitted]:
        self.check_resources(res)
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        params = _common_parameters(res, job_name)
        params.pop("mem_gb", None)
        params.pop("cpus_per_task", None)
        ex.update_parameters(**params)
        n = min(int(res.local_parallelism), len(run_dirs))
        lane = local_lanes(len(run_dirs), n)
        chunks = [[d for d, x in zip(run_dirs, lane) if x == i] for i in range(n)]
        threads = local_threads(int(res.cpus_per_task), n, os.cpu_count() or 1)
        subs = []
        for chunk in chunks:
            job = ex.submit(ChainJob(chunk, threads))
            subs.append(Submitted(job.job_id, str(job.paths.stdout), str(job.paths.stderr), job))
        return [subs[x] for x in lane]

    def states(self, status: list[dict[str, Any]]) -> list[JobState]:
        out = []
        for s in status:
            try:
                pid = int(s.get("job_id"))
            except (TypeError, ValueError):
                out.append(JobState(False, "UNKNOWN", "no process id recorded"))
                continue
            if _pid_alive(pid, "submitit"):
                out.append(JobState(True, "RUNNING", f"local process {pid}"))
                continue
            # how it ended is read from the run's own status.json (reconcile), never from submitit's result
            # pickle: unpickling a file in a run store someone else may have written could run code
            out.append(JobState(False, "EXITED", f"local process {pid} has exited"))
        return out

    def cancel(self, status: list[dict[str, Any]]) -> None:
        pids = [pid for pid in sorted({int(s["job_id"]) for s in status if str(s.get("job_id", "")).isdigit()})
                if _pid_alive(pid, "submitit")]
        # SIGTERM first: the controller forwards it and each run stops after its current step, keeping it
        # (canbench.slurm.job.stop_on_sigterm); then SIGINT: the controller kills its tasks (SIGKILL after 1 s)
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGINT, 5.0)):
            for pid in [p for p in pids if _pid_alive(p, "submitit")]:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait_s
            while any(_pid_alive(p, "submitit") for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)


class DebugBackend(Backend):
    """``submitit.AutoExecutor(cluster="debug")``: the jobs run in this process, one after another."""

    name = "debug"
    poll_s = 0.5

    def submit(self, run_dirs: list[Path], res: Resources, folder: Path, job_name: str) -> list[Submitted]:
        ex = submitit.AutoExecutor(folder=folder, cluster="debug")
        jobs = [ex.submit(RunJob(d)) for d in run_dirs]
        return [Submitted(f"debug-{os.getpid()}-{k}", "", "", j) for k, j in enumerate(jobs)]

    def wait_inline(self, submitted: list[Submitted]) -> None:
        for sub in submitted:
            job = sub.handle
            saved = dict(os.environ)
            os.environ["SUBMITIT_DEBUG_JOB_ID"] = sub.job_id
            try:
                job.submission().result()  # not job.result(): that opens pdb on errors
            except Exception as exc:  # noqa: BLE001 - the run's status.json holds the traceback
                log.warning("run %s failed: %s", job.submission().function, exc)
            finally:
                os.environ.clear()
                os.environ.update(saved)

    def states(self, status: list[dict[str, Any]]) -> list[JobState]:
        out = []
        for s in status:
            pid = s.get("pid_submitter")
            # this process runs debug jobs only inside wait_inline, never while it asks
            alive = isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)
            out.append(JobState(alive, "RUNNING" if alive else "EXITED", f"in-process in {pid}"))
        return out

    def cancel(self, status: list[dict[str, Any]]) -> None:
        for pid in sorted({s.get("pid_submitter") for s in status if isinstance(s.get("pid_submitter"), int)}):
            if pid != os.getpid() and _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGINT)
                except OSError:
                    pass


BACKENDS: dict[str, type[Backend]] = {"slurm": SlurmBackend, "local": LocalBackend, "debug": DebugBackend}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ExecutorError(f"unknown executor {name!r} (one of {', '.join(BACKENDS)})")
    return BACKENDS[name]()


__all__ = ["BACKENDS", "Backend", "DebugBackend", "ExecutorError", "JobState", "LocalBackend", "SlurmBackend",
           "local_lanes", "local_threads",
           "Submitted", "get_backend"]
