"""The job function every executor runs: a submitit ``Checkpointable`` that trains one run folder.

``RunJob(run_dir)()`` rebuilds the config from ``config.yaml``, sets the torch.distributed
environment from ``submitit.JobEnvironment()``, runs ``Trainer.fit(resume=True)`` and then the
run's evaluation suites. When SLURM (or submitit's local controller) signals a preemption or
time-out, submitit calls :meth:`RunJob.checkpoint` between two training steps (the engine holds
USR1/USR2/TERM during a step): it saves the live trainer's exact state and returns a fresh
``RunJob`` for the requeued job, which resumes at that step.

``ChainJob`` runs several run folders one after another in one job; the local executor uses it so
a grid does not start every run at once on one machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import submitit

from canbench import runtime
from canbench.rundir import RunBusyError, RunDir

log = logging.getLogger("canbench.grid.job")

TERMINATED = threading.Event()  # this job process received SIGTERM (kill, grid cancel, scancel)
_TRAINING = threading.Event()  # a trainer runs in this process: it stops at the next step boundary


def _stop_requested(_trainer: Any) -> bool:
    return TERMINATED.is_set()


def _on_sigterm(signum: int, frame: Any) -> None:
    TERMINATED.set()
    if not _TRAINING.is_set():  # evaluating, or between runs: stop now (results are written atomically)
        raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Make SIGTERM (and SIGINT: Ctrl-C reaches local jobs, which share the terminal's process group) stop this
    job within seconds, keeping its work: a training run stops after the current step, saves its checkpoint and
    is marked ``interrupted``; anything else stops at once. (submitit's own handler ignores SIGTERM, so a local
    job used to run on until SIGKILL.) Main thread only; idempotent."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigterm)


def _job_env() -> submitit.JobEnvironment | None:
    """The submitit job environment, or None when called outside a submitit job."""
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def master_port(job_id: str, salt: str = "") -> int:
    """A port in [20000, 40000) that all tasks of one job (and one requeue) agree on."""
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    return 20000 + zlib.crc32(f"{job_id}:{restart}:{salt}".encode()) % 20000


def set_distributed_env(env: submitit.JobEnvironment | None, salt: str = "") -> dict[str, str]:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT for the engine's init_from_env."""
    if env is None:
        values = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    else:
        hosts = env.hostnames
        master = "127.0.0.1" if env.num_nodes <= 1 else hosts[0]
        values = {"RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
                  "MASTER_ADDR": master, "MASTER_PORT": str(master_port(env.job_id, salt))}
    os.environ.update(values)
    return values


def evaluate_run(run_dir: Path, suites: list[str]) -> dict[str, Any]:
    """The run's evaluation suites (:func:`canbench.evaluation.runner.run_suites`), summarised for status.json:
    ``{suite: {"state": "done", "path", "skipped", "metrics" (scalars only)}}``."""
    if not suites:
        return {}
    from canbench.evaluation import runner

    results = runner.run_suites(run_dir, list(suites))
    out: dict[str, Any] = {}
    for s in suites:
        rec = results.get(s) if isinstance(results, dict) else None
        entry: dict[str, Any] = {"state": "done"}
        if isinstance(rec, dict):
            for k in ("path", "skipped"):
                if k in rec:
                    entry[k] = str(rec[k]) if k == "path" else rec[k]
            metrics = rec.get("metrics")
            if isinstance(metrics, dict):
                entry["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        out[s] = entry
    return out


class RunJob(submitit.helpers.Checkpointable):
    """Train (resuming) and evaluate one run folder; picklable, holds no live state across requeues."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(Path(run_dir).resolve())
        self._trainer = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}  # never pickle the live trainer into the requeue pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir = state["run_dir"]
        self._trainer = None

    def __repr__(self) -> str:
        return f"RunJob({self.run_dir!r})"

    def __call__(self) -> dict[str, Any]:
        """Own the run folder (rank 0; a second job on it is refused, its status left alone), then train and
        evaluate; SIGTERM stops it within seconds, keeping its work (:func:`stop_on_sigterm`)."""
        env = _job_env()
        if env is not None and env.cluster != "debug":
            stop_on_sigterm()
        main = env is None or env.global_rank == 0
        try:
            owned = RunDir(self.run_dir).own(job_id=env.job_id if env is not None else None, command="grid job") \
                if main else contextlib.nullcontext()
            with owned:
                return self._run()
        except RunBusyError as exc:  # the run is alive in another process
            log.warning("not started: %s", exc)
            return {"run_dir": self.run_dir, "state": "busy", "reason": str(exc)}

    def _run(self) -> dict[str, Any]:
        run_dir = Path(self.run_dir)
        env = _job_env()
        if env is not None and env.cluster != "debug" and not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _limit_threads()
        cfg_dict = RunDir(run_dir).read_config() or {}
        dist_env = set_distributed_env(env, salt=str(cfg_dict.get("extra", {}).get("run_id", "")))
        is_main = dist_env["RANK"] == "0"
        job_id = env.job_id if env is not None else None
        if is_main:
            self._mark_started(run_dir, env)
        try:
            from canbench.train.recipe import config_from_dict

            cfg = config_from_dict(cfg_dict, validate_paths=True)
            _TRAINING.set()
            try:
                summary = self._train(run_dir, cfg, cfg_dict, int(dist_env["WORLD_SIZE"]))
            finally:
                _TRAINING.clear()
        except Exception as exc:
            if is_main:  # the engine marks failures inside fit; this also covers set-up errors
                st = RunDir(run_dir).read_status()
                if st.get("state") != "failed" or st.get("job_id") != job_id:
                    RunDir(run_dir).update_status("failed", reason=f"{type(exc).__name__}: {exc}",
                                  traceback=traceback.format_exc(), job_id=job_id)
            raise
        finally:
            runtime.destroy()
        if summary.get("state") == "stopped":  # stopped on request: a requeued job continues it
            if TERMINATED.is_set() and is_main:  # SIGTERM: keep the steps done, say where it stopped
                saved = save_if_ahead(self._trainer)
                step = saved if saved is not None else summary.get("step")
                RunDir(run_dir).update_status("interrupted", phase="stopped", step=step,
                                              reason=f"stopped by SIGTERM at step {step} (checkpoint kept); "
                                                     "`grid submit` resumes it")
            return {"run_dir": self.run_dir, "state": "stopped", "step": summary.get("step")}
        self._trainer = None
        if TERMINATED.is_set():  # SIGTERM as training ended: its evaluation is left to the next submit
            if is_main:
                RunDir(run_dir).update_status("interrupted", phase="eval",
                                              reason="stopped by SIGTERM before its evaluation; `grid submit` runs it")
            return {"run_dir": self.run_dir, "state": "stopped", "step": summary.get("steps")}
        result: dict[str, Any] = {"run_dir": self.run_dir, "state": "done", "final": summary.get("final", {})}
        if not is_main:
            return result
        suites = list(cfg.extra.suites or [])
        if suites:
            RunDir(run_dir).update_status("running", phase="eval")
            try:
                suite_state = evaluate_run(run_dir, suites)
            except Exception as exc:
                RunDir(run_dir).update_status("failed", phase="eval",
                                              reason=f"evaluation failed: {type(exc).__name__}: {exc}",
                                              traceback=traceback.format_exc(), job_id=job_id)
                raise
            result["suites"] = suite_state
            RunDir(run_dir).update_status("done", phase="finished", suites=suite_state, finished=time.time())
        else:
            RunDir(run_dir).update_status("done", phase="finished", finished=time.time())
        return result

    def _train(self, run_dir: Path, cfg: Any, cfg_dict: dict[str, Any], world_size: int) -> dict[str, Any]:
        """``Trainer.fit(resume=True)``, once per distinct config in the run's store (status ``train_store``): a
        one-process job holds the store's lock for the config's training key while it trains, so a twin run of
        another grid waits, then adopts the finished training instead of repeating it (:mod:`.runstore`)."""
        from canbench.train.trainer import Trainer

        from .runstore import adopt_training, claim_training, is_trained, trained_twin, training_key, training_lock

        run = RunDir(run_dir)
        summary = run.read_summary()
        if summary is not None and summary.get("trained_in") and is_trained(run_dir):
            return summary  # adopted at submit time (or by an earlier attempt): evaluation only
        store = run.read_status().get("train_store")
        if not store or world_size != 1:  # multi-process jobs: sharing is decided at submit time only
            self._trainer = Trainer(cfg, run_dir, stop=_stop_requested)
            return self._trainer.fit(resume=True)
        key = training_key(cfg_dict)
        with training_lock(store, key, stop=TERMINATED.is_set) as held:
            if not held:  # cancelled while a twin trained: nothing done here
                return {"state": "stopped", "step": 0}
            twin = trained_twin(store, key, exclude=run_dir)
            if twin is not None:
                log.info("%s: the same config was trained in %s; sharing it instead of training again", run_dir, twin)
                summary = adopt_training(twin, run_dir)
                run.update_status("running", step=summary.get("steps"))
                return summary
            claim_training(store, key, run_dir)
            self._trainer = Trainer(cfg, run_dir, stop=_stop_requested)
            return self._trainer.fit(resume=True)

    def _mark_started(self, run_dir: Path, env: submitit.JobEnvironment | None) -> None:
        st = RunDir(run_dir).read_status()
        fields: dict[str, Any] = {"phase": "pretrain", "host": socket.gethostname(), "pid": os.getpid(),
                                  "started": time.time(), "attempts": int(st.get("attempts", 0)) + 1}
        if env is not None:
            fields["job_id"] = env.job_id
            try:
                paths = env.paths
                fields["log_out"], fields["log_err"] = str(paths.stdout), str(paths.stderr)
                _link_logs(run_dir, [paths.stdout, paths.stderr])
            except KeyError:  # no SUBMITIT_FOLDER (called in-process)
                pass
        RunDir(run_dir).update_status("running", **fields)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Save the live trainer's exact state (between steps) and hand submitit a fresh job to requeue."""
        saved = save_if_ahead(self._trainer)
        try:
            RunDir(self.run_dir).update_status("pending", phase="requeued", requeued=time.time(),
                          **({"step": saved} if saved is not None else {}))
        except Exception:  # noqa: BLE001 - never block a requeue on bookkeeping
            log.exception("could not record the requeue in %s", self.run_dir)
        return submitit.helpers.DelayedSubmission(type(self)(self.run_dir), *args, **kwargs)


def save_if_ahead(trainer) -> int | None:
    """``trainer.save_checkpoint()`` when it has completed steps beyond the checkpoint on disk.

    Before the first step of a (resumed) session the trainer's state may be half restored (model
    loaded, RNG not yet), so it is never saved then: the checkpoint on disk already holds it.
    """
    if trainer is None or getattr(trainer, "model", None) is None or not hasattr(trainer, "info"):
        return None
    from canbench.train import checkpoint as ckpt

    path = ckpt.checkpoint_path(trainer.run_dir)
    on_disk = 0
    if path.is_file():
        import torch

        try:
            on_disk = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:  # noqa: BLE001 - an unreadable last.pt: the live state is worth saving
            on_disk = 0
    if trainer.step <= on_disk:
        return None
    trainer.save_checkpoint()
    log.info("checkpointed %s at step %d for the requeue", trainer.run_dir, trainer.step)
    return int(trainer.step)


def _limit_threads() -> None:
    """No more torch threads than the CPUs SLURM gave each task (oversubscription is very slow)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        torch.set_num_threads(max(1, min(torch.get_num_threads(), int(cpus))))


def _link_logs(run_dir: Path, paths: list[Path]) -> None:
    """Symlinks in ``<run>/logs/`` to the scheduler's log files of this job."""
    logs = RunDir(run_dir).logs_dir
    logs.mkdir(exist_ok=True)
    for p in paths:
        link = logs / Path(p).name
        try:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(p).resolve())
        except OSError:
            pass


class ChainJob(submitit.helpers.Checkpointable):
    """Several runs, one after another, in one job (done runs are skipped; a failure does not stop the
    chain on one process). Used by the local executor to bound how many runs train at once."""

    def __init__(self, run_dirs: list[str | Path], threads: int | None = None) -> None:
        self.run_dirs = [str(Path(d).resolve()) for d in run_dirs]
        self.threads = threads  # torch intra-op threads of this process (None: torch's default)
        self._current: RunJob | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dirs": self.run_dirs, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dirs = state["run_dirs"]
        self.threads = state.get("threads")
        self._current = None

    def __call__(self) -> list[dict[str, Any]]:
        results = []
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        multi = int(os.environ.get("SUBMITIT_LOCAL_NTASKS", os.environ.get("SLURM_NTASKS", "1"))) > 1
        for d in self.run_dirs:
            if TERMINATED.is_set():  # SIGTERM: the rest of the chain stays pending (grid submit resumes it)
                break
            if RunDir(d).state == "done":
                results.append({"run_dir": d, "state": "done", "skipped": True})
                continue
            self._current = RunJob(d)
            try:
                results.append(self._current())
            except Exception as exc:
                if multi:  # other ranks would wait for this one forever
                    raise
                results.append({"run_dir": d, "state": "failed", "error": f"{type(exc).__name__}: {exc}"})
            finally:
                self._current = None
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        if self._current is not None:
            self._current.checkpoint()
        remaining = [d for d in self.run_dirs if RunDir(d).state != "done"]
        return submitit.helpers.DelayedSubmission(type(self)(remaining, self.threads), *args, **kwargs)


__all__ = ["ChainJob", "RunJob", "master_port", "evaluate_run", "save_if_ahead", "set_distributed_env"]
