"""The pretraining engine: one loop for CAN, SimCLR and MAE, exact resume, atomic checkpoints.

Reads top to bottom: set-up (device, distributed, data, model, optimizer), optional resume, then
per step: batch -> device augmentation -> micro-batches -> forward/backward -> clip -> AdamW step.
Signals (SLURM's USR2 / TERM) are held during a step, so a requeue handler always sees the state
between two steps and its checkpoint is exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from canbench.config import Config, ConfigError, Derived, derived, flatten, validate
from canbench.fingerprint import protocol_fingerprint
from canbench.io import append_jsonl, read_jsonl, write_json, write_text, write_yaml
from canbench.methods import build_method, num_views
from canbench.runtime import DistInfo, all_reduce_mean, init_from_env
from canbench.status import write_status
from canbench.train import checkpoint
from canbench.train.schedule import warmup_cosine

log = logging.getLogger("canbench.pretrain")

_DEFERRED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""


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


def resolve_device(cfg: Config) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available (use train.device=cpu or auto)")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 on GPU by default, fp32 (no autocast) on CPU; fp16 uses a GradScaler."""
    p = cfg.train.precision
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def use_compile(cfg: Config, device: torch.device) -> bool:
    """``train.compile``: true / false, or auto = on for CUDA (a win for every method measured on an H100,
    BENCHMARKS.md) and off on CPU (inductor's C++ compile costs minutes there; smoke runs last seconds)."""
    c = cfg.train.compile
    return c == "true" or (c == "auto" and device.type == "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D params (norms, biases) and on no_weight_decay() names."""
    skip: set[str] = set()
    for name, mod in model.named_modules():
        if hasattr(mod, "no_weight_decay"):
            skip |= {f"{name}.{n}" if name else n for n in mod.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(method: nn.Module, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None
                    ) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """AdamW over :func:`param_groups` (fused kernels on CUDA; lr set per step) and a GradScaler for fp16 only."""
    optimizer = torch.optim.AdamW(param_groups(method, cfg.optim.weight_decay), lr=0.0,
                                  betas=tuple(cfg.optim.betas), **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return optimizer, scaler


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, method: nn.Module,
                   clip_grad: float | None) -> None:
    """After backward: unscale (fp16), clip the global grad norm, step, zero the grads (no host sync)."""
    if scaler:
        scaler.unscale_(optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Trainer:
    """Owns the run: ``Trainer(cfg, run_dir).fit(resume=True)``."""

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg)
        self.dist: DistInfo = init_from_env(self.device.type)
        validate(cfg, world_size=self.dist.world_size, check_paths=True)
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.step = 0
        self._stop_requested = False
        self.model: nn.Module | None = None
        self.last_saved_step: int | None = None  # step of the newest checkpoint written by this trainer

    # ---- set-up ---------------------------------------------------------------------------
    def _build_data(self):
        from canbench.data.augment import ViewAugConfig
        from canbench.data.datasets import build_dataset

        d, mo = self.cfg.data, self.cfg.model
        builtin_kw = {"size": d.builtin_size, "seed": self.cfg.train.seed} if d.dataset == "builtin" else {}
        self.jpeg_files = None
        if d.gpu_augment and d.dataset in ("imagefolder", "imagenet"):
            # fast path: workers read JPEG bytes + draw parameters; decode/crop/augment on the device
            from canbench.data.gpu_pipeline import imagefolder_files

            self.jpeg_files, _ = imagefolder_files(d.root, d.split)
            self.dataset = self.jpeg_files
        else:
            self.dataset = build_dataset(d.dataset, root=d.root, split=d.split, img_size=mo.img_size, **builtin_kw)
        self.aug = ViewAugConfig(img_size=mo.img_size, kind=d.augment, crop_scale=(d.crop_min_scale, 1.0),
                                 jitter_strength=d.color_jitter_strength, blur_kernel_frac=d.blur_kernel_frac)
        if d.augment == "mae":
            self.aug.crop_scale = (max(d.crop_min_scale, 0.2), 1.0) if d.crop_min_scale == 0.08 else \
                (d.crop_min_scale, 1.0)
        self.views = num_views(self.cfg.method.name)

    def _loader(self, start_step: int, total_steps: int):
        from canbench.data.loader import build_pretrain_loader

        d = self.cfg.data
        kw = dict(num_views=self.views, seed=self.cfg.train.seed, global_batch=self.cfg.optim.batch_size,
                  start_step=start_step, total_steps=total_steps, rank=self.dist.rank,
                  world_size=self.dist.world_size, num_workers=d.num_workers,
                  pin_memory=d.pin_memory and self.device.type == "cuda", persistent_workers=d.persistent_workers,
                  prefetch_factor=d.prefetch_factor)
        if self.jpeg_files is not None:
            from canbench.data.gpu_pipeline import build_jpeg_pretrain_loader

            loader = build_jpeg_pretrain_loader(self.jpeg_files, self.aug, **kw)
        else:
            loader = build_pretrain_loader(self.dataset, self.aug, **kw)
        if d.num_workers > 0:
            loader.worker_init_fn = _ignore_requeue_signals
        return loader

    def _model_inputs(self, loader) -> Iterator[dict[str, torch.Tensor]]:
        """Batches as model inputs {"views": (V, N, 3, S, S), "seed": (N,)} on the device."""
        from canbench.data.loader import IMAGENET_MEAN, IMAGENET_STD, to_model_input

        if self.jpeg_files is not None:
            from canbench.data.gpu_pipeline import prefetch_to_device

            yield from prefetch_to_device(iter(loader), self.aug, self.device)
            return
        for batch in loader:
            yield {"views": to_model_input(batch, self.aug, self.device, IMAGENET_MEAN, IMAGENET_STD),
                   "seed": batch["seed"].to(self.device, non_blocking=True)}

    def _build_model(self) -> None:
        torch.manual_seed(self.cfg.train.seed)  # parameter init is a function of the seed alone
        self.method = build_method(self.cfg).to(self.device)
        self.optimizer, self.scaler = build_optimizer(self.method, self.cfg, self.device, self.amp_dtype)
        model: nn.Module = self.method
        if self.dist.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if use_compile(self.cfg, self.device):
            model = torch.compile(model)
        self.model = model

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write the exact state after the last completed step (rank 0 writes; all ranks wait)."""
        path = None
        self.last_saved_step = self.step
        if self.dist.is_main:
            path = checkpoint.save(self.run_dir, cfg=self.cfg, model=self.method, optimizer=self.optimizer,
                                   scaler=self.scaler, step=self.step, total_steps=self.info.total_steps,
                                   extra={"derived": asdict(self.info)}, keep=self.cfg.train.keep_checkpoints)
        return path

    def _restore(self) -> bool:
        path = checkpoint.checkpoint_path(self.run_dir)
        if not path.is_file():
            return False
        ckpt = checkpoint.load(path, map_location=self.device)
        saved = ckpt["config"]
        if saved != self.cfg.to_dict():
            from canbench.fingerprint import mismatches

            diff = mismatches(flatten(saved), flatten(self.cfg.to_dict()))
            raise ConfigError(f"--resume: the config differs from the checkpoint's at {path}: {diff}")
        self.method.load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self._rng_to_restore = ckpt["rng"]
        if self.dist.is_main:  # drop metrics logged after the checkpoint: they will be logged again
            metrics = self.run_dir / "metrics.jsonl"
            rows = [r for r in read_jsonl(metrics) if r.get("step", 0) <= self.step]
            write_text(metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # ---- the loop -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop cleanly after the current step (e.g. from a signal handler)."""
        self._stop_requested = True

    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train to the end (or until stopped); returns the run summary."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build_data()
        self.info: Derived = derived(self.cfg, len(self.dataset), world_size=self.dist.world_size)
        self._build_model()
        self._rng_to_restore = None
        resumed = resume and self._restore()
        if not resumed and (self.run_dir / "metrics.jsonl").exists() and self.dist.is_main:
            (self.run_dir / "metrics.jsonl").unlink()  # a fresh start owns its metrics
        if self.dist.is_main:
            write_yaml(self.run_dir / "config.yaml", self.cfg.to_dict())
            write_status(self.run_dir, "running", step=self.step)
            log.info("run %s: %s", self.run_dir, asdict(self.info))
        try:
            self._loop()
        except BaseException as exc:  # mark failed, keep the last good checkpoint, re-raise
            if self.dist.is_main and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                write_status(self.run_dir, "failed", step=self.step, reason=f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc())
            raise
        if self.step < self.info.total_steps:  # stopped on request (requeue): not done
            return {"state": "stopped", "step": self.step}
        summary = self._summary()
        if self.dist.is_main:
            write_json(self.run_dir / "summary.json", summary)
            self._export_encoder()
            write_status(self.run_dir, "done", step=self.step)
        return summary

    def _loop(self) -> None:
        cfg, info = self.cfg, self.info
        loader = self._loader(self.step, info.total_steps)
        batches = iter(loader)  # created before the RNG is (re)set: worker seeding draws from it
        inputs = self._model_inputs(batches)
        if self._rng_to_restore is not None:
            checkpoint.set_rng_state(self._rng_to_restore)
        else:
            torch.manual_seed(cfg.train.seed + 1000 * self.dist.rank)
        self.model.train()
        accum = cfg.optim.accum_steps
        window: dict[str, list[torch.Tensor]] = {}
        t_last, n_img = time.perf_counter(), 0
        bar = _progress(info.total_steps, self.step) if self.dist.is_main else None
        tb = _tensorboard(self.run_dir) if self.dist.is_main else None
        while self.step < info.total_steps and not self._stop_requested:
            batch = next(inputs)
            with defer_signals():
                lr = warmup_cosine(self.step, info.total_steps, info.warmup_steps, info.lr,
                                   cfg.optim.min_lr * cfg.optim.batch_size / 256)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                views, seeds = batch["views"], batch["seed"]
                n = seeds.shape[0]
                chunk = n // accum
                for i in range(accum):
                    micro = {"views": views[:, i * chunk:(i + 1) * chunk], "seed": seeds[i * chunk:(i + 1) * chunk]}
                    sync = i == accum - 1 or not hasattr(self.model, "no_sync")
                    ctx = contextlib.nullcontext() if sync else self.model.no_sync()
                    with ctx, torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                             enabled=self.amp_dtype is not None):
                        out = self.model(micro)
                    loss = out["loss"] / accum
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                    for k, v in out.items():
                        window.setdefault(k, []).append(v.detach().float())
                optimizer_step(self.optimizer, self.scaler, self.method, cfg.optim.clip_grad)
                self.step += 1
                n_img += n * self.dist.world_size
                last = self.step == info.total_steps
                if self.step % cfg.train.log_every == 0 or last:
                    t_now = time.perf_counter()
                    record = self._log(window, lr, n_img / max(t_now - t_last, 1e-9))
                    window, t_last, n_img = {}, t_now, 0
                    if self.dist.is_main and not last:  # progress for `grid status` / the demo (one small file)
                        write_status(self.run_dir, "running", step=self.step, total_steps=info.total_steps)
                    if bar is not None:
                        bar.update(cfg.train.log_every if not last else info.total_steps - bar.n)
                        bar.set_postfix(loss=f"{record['loss']:.4f}")
                    if tb is not None:
                        for k, v in record.items():
                            if isinstance(v, float):
                                tb.add_scalar(f"train/{k}", v, self.step)
                if self.step % cfg.train.ckpt_every == 0 or last:
                    self._check_finite(window)
                    self.save_checkpoint()
                    if self.dist.is_main:
                        write_status(self.run_dir, "running", step=self.step)
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()

    def _check_finite(self, window: dict[str, list[torch.Tensor]]) -> None:
        """Raise NonFiniteLossError naming the first bad step and term (host sync: log/ckpt steps only)."""
        for k, vals in window.items():
            for i, v in enumerate(vals):
                if not torch.isfinite(v).all():
                    first = self.step - (len(vals) - i - 1) // self.cfg.optim.accum_steps
                    raise NonFiniteLossError(f"non-finite loss term {k!r} at step {first}: {float(v)}; "
                                             f"the last good checkpoint is kept in {self.run_dir}")

    def _log(self, window: dict[str, list[torch.Tensor]], lr: float, img_per_s: float) -> dict[str, Any]:
        self._check_finite(window)
        record: dict[str, Any] = {"step": self.step, "epoch": self.step / self.info.steps_per_epoch, "lr": lr,
                                  "img_per_s": img_per_s, "time": time.time()}
        for k, vals in window.items():
            record[k] = float(all_reduce_mean(torch.stack(vals).mean()))
        if self.device.type == "cuda":
            record["peak_mem_bytes"] = torch.cuda.max_memory_allocated(self.device)
        if self.dist.is_main:
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            if not sys.stderr.isatty():
                log.info("step %d/%d %s", self.step, self.info.total_steps,
                         " ".join(f"{k}={record[k]:.4g}" for k in window))
        return record

    def _summary(self) -> dict[str, Any]:
        rows = read_jsonl(self.run_dir / "metrics.jsonl")
        tail = rows[-max(1, len(rows) // 10):] if rows else []
        terms = [k for k in ("loss", "infonce", "rec", "denoise") if tail and k in tail[-1]]
        final = {k: sum(r[k] for r in tail) / len(tail) for k in terms}
        ips = [r["img_per_s"] for r in rows[1:]] or [r["img_per_s"] for r in rows]
        img_per_s = sorted(ips)[len(ips) // 2] if ips else 0.0
        images = self.info.total_steps * self.cfg.optim.batch_size
        n_dev = self.dist.world_size
        device_hours = images / max(img_per_s, 1e-9) / 3600 * n_dev
        summary = {
            "run_id": self.cfg.extra.get("run_id"), "method": self.cfg.method.name, "arch": self.cfg.model.arch,
            "steps": self.step, "images_seen": images, "final": final, "img_per_s": img_per_s,
            "device_hours": device_hours, "gpu_hours": device_hours if self.device.type == "cuda" else 0.0,
            "peak_mem_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            "flops_per_image": _flops_or_none(self.cfg) if self.cfg.train.count_flops else None,
            "derived": asdict(self.info),
            "fingerprint": protocol_fingerprint(method=self.cfg.method.name, arch=self.cfg.model.arch,
                                                img_size=self.cfg.model.img_size, dataset=self.cfg.data.dataset,
                                                effective_batch=self.cfg.optim.batch_size,
                                                lr_scaling="base_lr*batch/256", epochs=self.cfg.optim.epochs,
                                                epoch_unit=self.cfg.optim.epoch_unit, seed=self.cfg.train.seed,
                                                world_size=n_dev),
        }
        return summary

    def _export_encoder(self) -> None:
        """encoder.pt: a timm-loadable state dict with the create_model arguments."""
        from canbench.io import torch_save_atomic
        from canbench.methods.backbone import TIMM_NAMES

        enc = self.method.encoder
        torch_save_atomic({"timm_name": TIMM_NAMES[self.cfg.model.arch], "timm_kwargs": enc.timm_kwargs(),
                           "state_dict": enc.export_timm(), "step": self.step}, self.run_dir / "encoder.pt")


def _flops_or_none(cfg: Config) -> dict[str, float] | None:
    """Per-image training FLOPs (issue 6 counter) when available; never fails a finished run."""
    try:
        from canbench.methods.flops import count_method_flops
    except ImportError:
        return None
    try:
        return count_method_flops(cfg)
    except Exception as exc:  # noqa: BLE001 - accounting must not lose a finished run
        log.warning("FLOPs accounting failed: %s", exc)
        return None


def _progress(total: int, start: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Pretrain ``cfg`` into ``run_dir``; continues from ``run_dir``'s checkpoint when ``resume``."""
    return Trainer(cfg, run_dir).fit(resume=resume)


__all__ = ["NonFiniteLossError", "Trainer", "build_optimizer", "defer_signals", "optimizer_step", "param_groups",
           "pretrain"]
