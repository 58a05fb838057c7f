"""The trainer: one loop for every method, exact resume, atomic checkpoints.

``Trainer(cfg, run_dir).fit()`` reads top to bottom: the input pipeline (:class:`canbench.data.pipeline.
PretrainData`), the derived schedule (:func:`canbench.config.derived`), the training step
(:class:`canbench.train.step.TrainStep`), an optional resume from the run folder's checkpoint, then the
loop: batch -> learning rate -> step -> log (:class:`canbench.train.logger.RunLogger`) -> checkpoint. Signals
(SLURM's USR2 / TERM) are held during a step, so a requeue handler always sees the state between two
steps and its checkpoint is exact. ``stop`` (a callable of the trainer) ends the loop cleanly after a step.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from canbench.config import LR_SCALING, Config, ConfigError, Derived, derived, flatten
from canbench.data.identity import identify
from canbench.data.pipeline import PretrainData
from canbench.fingerprint import batch_provenance, environment, mismatches, protocol_fingerprint
from canbench.io import file_sha256, remove_leftovers, torch_save_atomic
from canbench.methods import method_class
from canbench.rundir import RunDir
from canbench.runtime import DistInfo, init_from_env, resolve_device
from canbench.train import checkpoint
from canbench.train.logger import NonFiniteLossError, RunLogger
from canbench.train.recipe import validate
from canbench.train.schedule import warmup_cosine
from canbench.train.step import TrainStep

log = logging.getLogger("canbench.pretrain")

_DEFERRED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


@contextlib.contextmanager
def defer_signals():
    """Hold USR1/USR2/TERM for the duration of a step (main thread, POSIX); delivered right after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_requeue_signals(_worker_id: int) -> None:
    """DataLoader workers must not die of SLURM's USR2 warning signal; the main process handles it."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class Trainer:
    """Owns the run: ``Trainer(cfg, run_dir).fit(resume=True)``; ``stop(trainer) -> bool`` is asked after each step."""

    def __init__(self, cfg: Config, run_dir: str | Path, stop: Callable[[Trainer], bool] | None = None) -> None:
        self.cfg = cfg
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.device = resolve_device(cfg.train.device, "train.device")
        self.dist: DistInfo = init_from_env(self.device.type)
        validate(cfg, world_size=self.dist.world_size, check_paths=True)
        self.stop = stop
        self.step = 0
        self.model: torch.nn.Module | None = None  # set by fit; the requeue handler saves only a built trainer
        self.last_saved_step: int | None = None  # step of the newest checkpoint written by this trainer
        self._resumed_step: int | None = None  # step of the checkpoint this session resumed from
        self._ckpt_clock = time.monotonic()  # when the last checkpoint was written (train.ckpt_minutes)

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write the exact state after the last completed step (rank 0 writes; all ranks wait)."""
        path = None
        self._ckpt_clock = time.monotonic()
        if self.dist.is_main:
            path = checkpoint.save(self.run_dir, cfg=self.cfg, model=self.method, optimizer=self.optimizer,
                                   scaler=self.scaler, step=self.step, total_steps=self.info.total_steps,
                                   extra={"derived": asdict(self.info), "logger": self.logger.state_dict(),
                                          "bad_images": list(self.data.bad_images.paths)},
                                   keep=self.cfg.train.keep_checkpoints)
        self.last_saved_step = self.step
        return path

    def _restore(self) -> dict[str, Any] | None:
        """Load the run folder's checkpoint into the step; returns its RNG state (None without a checkpoint)."""
        found = checkpoint.load_resumable(self.run_dir, map_location=self.device)
        if found is None:
            return None
        ckpt, path = found
        saved = ckpt["config"]
        if saved != self.cfg.to_dict():  # keys added to the schema since it was written take their defaults
            saved = _normalised(saved)
        if saved != self.cfg.to_dict():
            diff = mismatches(flatten(saved), flatten(self.cfg.to_dict()))
            raise ConfigError(f"--resume: the config differs from the checkpoint's at {path}: {diff}")
        self.method.load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self._resumed_step = self.step
        self.logger.step = self.step
        if "logger" in ckpt.get("extra", {}):  # what was collected since the last log line, and the final window
            self.logger.load_state_dict(ckpt["extra"]["logger"])
        self.data.bad_images.paths = dict.fromkeys(ckpt.get("extra", {}).get("bad_images", []))  # met before
        if self.dist.is_main:  # drop metrics logged after the checkpoint: they will be logged again
            self.run.keep_metrics_until(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return ckpt["rng"]

    # ---- the loop -------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train to the end (or until ``stop`` says so); returns the run summary."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._owned(), use_threads(self.cfg.train.threads):
            return self._fit(resume)

    @contextlib.contextmanager
    def _owned(self):
        """Own the run folder while training (rank 0; :meth:`RunDir.own`): a second trainer is refused naming
        this one, and a dead one leaves nothing held. Temp files a killed write left are removed first; a full
        disk ends the run with a clear error (status and checkpoints stay whole: every write is atomic)."""
        if not self.dist.is_main:
            yield
            return
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
        with self.run.own(job_id=job, command="train"):
            for folder in (self.run_dir, self.run.checkpoint_dir, self.run.eval_dir, self.run.finetune_dir):
                for p in remove_leftovers(folder):
                    log.info("removed %s (left by an interrupted write)", p)
            try:
                yield
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                good = self.last_saved_step if self.last_saved_step is not None else self._resumed_step
                kept = (f"the last good checkpoint (step {good}) is kept in {self.run.checkpoint_dir}" if good
                        else "no checkpoint was written yet")
                raise ConfigError(f"{exc.filename or self.run_dir}: {exc.strerror or exc} at step {self.step}: "
                                  f"training stopped; {kept}; free space, then resume (pretrain --resume or grid "
                                  "submit): the resumed run is the same as an uninterrupted one") from None

    def _fit(self, resume: bool) -> dict[str, Any]:
        self.data = PretrainData(self.cfg)
        self.info: Derived = derived(self.cfg, len(self.data), world_size=self.dist.world_size)
        self.train_step = TrainStep(self.cfg, self.device, self.dist)
        self.method, self.optimizer, self.scaler = self.train_step.method, self.train_step.optimizer, \
            self.train_step.scaler
        self.model = self.train_step.model
        self.logger = RunLogger(self.run, total_steps=self.info.total_steps, steps_per_epoch=self.info.steps_per_epoch,
                                log_every=self.cfg.train.log_every, accum_steps=self.cfg.optim.accum_steps,
                                start_step=0, device=self.device, is_main=self.dist.is_main,
                                config=self.cfg.to_dict())
        rng = self._restore() if resume else None
        if rng is None and self.dist.is_main:  # a fresh start owns its metrics; what a previous run left is stale
            for stale in (self.run.metrics_path, self.run.summary_path, self.run.encoder_path,
                          self.run.last_checkpoint, self.run.prev_checkpoint):  # never a fallback of another run
                stale.unlink(missing_ok=True)
        if self.dist.is_main:
            self.run.write_config(self.cfg.to_dict())
            self.run.write_status("running", step=self.step)
            log.info("run %s: %s", self.run_dir, asdict(self.info))
        try:
            self._loop(rng)
        except BaseException as exc:  # mark failed, keep the last good checkpoint, re-raise
            if self.dist.is_main and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                try:
                    self.run.write_status("failed", step=self.step, reason=f"{type(exc).__name__}: {exc}",
                                          traceback=traceback.format_exc())
                except OSError as werr:  # e.g. the disk is full: the released lock shows the run as interrupted
                    log.warning("could not record the failure in %s: %s", self.run.status_path, werr)
            raise
        if self.step < self.info.total_steps:  # stopped on request (requeue): not done
            return {"state": "stopped", "step": self.step}
        summary = self._summary()
        if self.dist.is_main:
            summary["checkpoint_sha256"] = file_sha256(self.run.last_checkpoint)  # results name the checkpoint
            self.run.write_summary(summary)
            self._export_encoder()
            self.run.write_status("done", step=self.step, phase="trained")  # a grid job then evaluates: "finished"
        return summary

    def _loop(self, rng: dict[str, Any] | None) -> None:
        cfg, info = self.cfg, self.info
        views = method_class(cfg.method.name).num_views
        loader = self.data.loader(views, self.step, info.total_steps, self.dist.rank, self.dist.world_size,
                                  pin_memory=cfg.data.pin_memory and self.device.type == "cuda",
                                  worker_init_fn=_ignore_requeue_signals)
        batches = iter(loader)  # created before the RNG is (re)set: worker seeding draws from it
        inputs = self.data.model_inputs(batches, self.device)
        if rng is not None:
            checkpoint.set_rng_state(rng)
        else:
            torch.manual_seed(cfg.train.seed + 1000 * self.dist.rank)
        self.model.train()
        logger = self.logger
        logger.restart_clock(self.step)
        try:
            while self.step < info.total_steps and not (self.stop is not None and self.stop(self)):
                batch = next(inputs)
                with defer_signals():
                    lr = warmup_cosine(self.step, info.total_steps, info.warmup_steps, info.lr, info.min_lr)
                    terms = self.train_step(batch, lr)
                    self.step += 1
                    logger.after_step(self.step, terms, lr, batch["seed"].shape[0] * self.dist.world_size)
                    due = self.step % cfg.train.ckpt_every == 0 or self.step == info.total_steps
                    if not due and cfg.train.ckpt_minutes > 0:  # wall-clock cadence, on a step boundary
                        due = time.monotonic() - self._ckpt_clock >= 60.0 * cfg.train.ckpt_minutes
                    if due:
                        logger.check_finite()
                        self.save_checkpoint()
                        if self.dist.is_main:
                            self.run.write_status("running", step=self.step)
        finally:
            logger.close()

    def _summary(self) -> dict[str, Any]:
        rows = self.run.read_metrics()
        final = self.logger.final()
        ips = [r["img_per_s"] for r in rows[1:]] or [r["img_per_s"] for r in rows]
        img_per_s = sorted(ips)[len(ips) // 2] if ips else 0.0
        images = self.info.total_steps * self.cfg.optim.batch_size
        n_dev = self.dist.world_size
        device_hours = images / max(img_per_s, 1e-9) / 3600 * n_dev
        c = self.cfg
        d = c.data
        provenance = {**environment(), "precision": self.train_step.precision, "checkpoint_step": self.step,
                      "threads": torch.get_num_threads(),
                      **batch_provenance(c.optim.batch_size, c.optim.accum_steps, n_dev,
                                         method_class(c.method.name).contrastive and c.method.l_nce > 0)}
        return {
            "run_id": c.extra.run_id, "method": c.method.name, "arch": c.model.arch,
            "steps": self.step, "images_seen": images, "final": final,
            "final_window": {"from_step": self.logger.final_from, "to_step": self.step},
            "loss_weights": dict(self.method.weights), "empty_terms": self.method.empty_terms(),
            "bad_images": self.data.bad_images.summary(),  # unreadable files replaced (docs/data.md)
            "data_identity": identify(d.dataset, d.root, d.split, builtin_version=d.builtin_version,
                                      size=d.builtin_size),
            "provenance": provenance, "img_per_s": img_per_s,
            "device_hours": device_hours, "gpu_hours": device_hours if self.device.type == "cuda" else 0.0,
            "peak_mem_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            "flops_per_image": _flops_or_none(c) if c.train.count_flops else None,
            "derived": asdict(self.info),
            "fingerprint": protocol_fingerprint(method=c.method.name, arch=c.model.arch, img_size=c.model.img_size,
                                                dataset=c.data.dataset, effective_batch=c.optim.batch_size,
                                                lr_scaling=LR_SCALING, epochs=c.optim.epochs,
                                                epoch_unit=c.optim.epoch_unit, seed=c.train.seed, world_size=n_dev),
        }

    def _export_encoder(self) -> None:
        """encoder.pt: a timm-loadable state dict with the create_model arguments."""
        from canbench.methods.backbone import TIMM_NAMES

        enc = self.method.encoder
        torch_save_atomic({"timm_name": TIMM_NAMES[self.cfg.model.arch], "timm_kwargs": enc.timm_kwargs(),
                           "state_dict": enc.export_timm(), "step": self.step}, self.run.encoder_path)


@contextlib.contextmanager
def use_threads(threads: int):
    """Torch's CPU threads from ``train.threads`` while training (0: leave torch's choice), restored after (an
    in-process caller keeps its own). Set on every attempt (fresh, resumed, requeued, any executor): CPU results
    depend on it bit for bit."""
    before = torch.get_num_threads()
    if threads > 0 and before != threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _normalised(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A stored config as today's schema writes it (keys added since take their defaults)."""
    from canbench.train.recipe import config_from_dict

    try:
        return config_from_dict(cfg_dict).to_dict()
    except ConfigError:
        return cfg_dict


def _flops_or_none(cfg: Config) -> dict[str, float] | None:
    """Per-image training FLOPs of the method (:mod:`canbench.methods.flops`); never fails a finished run."""
    from canbench.methods.flops import count_method_flops

    try:
        return count_method_flops(cfg)
    except Exception as exc:  # noqa: BLE001 - accounting must not lose a finished run
        log.warning("FLOPs accounting failed: %s", exc)
        return None


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = True,
             stop: Callable[[Trainer], bool] | None = None) -> dict[str, Any]:
    """Pretrain ``cfg`` into ``run_dir``; continues from ``run_dir``'s checkpoint when ``resume``."""
    return Trainer(cfg, run_dir, stop=stop).fit(resume=resume)


__all__ = ["NonFiniteLossError", "Trainer", "defer_signals", "pretrain", "use_threads"]
