"""Training-step throughput: images/s, step time, MFU and peak memory, model-only or end to end.

What is timed is the trainer's own step, :class:`canbench.train.step.TrainStep`: forward under autocast
(bf16 on GPU, none = fp32 on CPU, ``train.precision`` overrides), backward, AdamW (fused on CUDA),
``zero_grad(set_to_none=True)``.

Data modes (``ThroughputOptions.data``):

* ``synthetic``: model step only. Views and per-step seeds are created on the device before timing;
  nothing crosses the host boundary inside the timed loop.
* ``builtin`` / ``jpeg:/path`` / ``jpeg-gpu:/path``: end to end through the trainer's own input pipeline,
  :class:`canbench.data.pipeline.PretrainData` (``jpeg``: CPU workers decode and crop; ``jpeg-gpu``: workers
  read JPEG bytes and draw parameters, decode, crop, resize and photometric ops run batched on the device;
  ``dali:/path``: the same workers feed an NVIDIA DALI pipeline, ``data.pipeline=dali``).

Timing: ``warmup`` untimed steps (they also absorb ``torch.compile``), then ``steps`` timed steps. On
CUDA each step is bracketed by CUDA events and the host synchronises once, after the last step; on
CPU ``time.perf_counter`` brackets each step (CPU execution is synchronous). ``img_per_s`` is
``batch / median step time`` (the convention of the reference figures in BENCHMARKS.md);
``img_per_s_wall`` is images over the wall time of the whole timed loop. MFU = counted train FLOPs per
image (:mod:`canbench.methods.flops`) x img/s / a peak, twice, labelled: ``mfu_spec`` against the vendor's
dense bf16 spec peak of the card (:func:`.hardware.spec_peak`; the convention of public MFU figures;
omitted, with a note, for a card not in the table) and ``mfu_measured`` against the measured bf16 matmul
peak (:func:`.hardware.measure_matmul_peak`, or ``--peak-tflops``). Neither is reported on CPU.
"""

from __future__ import annotations

import copy
import gc
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from canbench.config import Config, ConfigError, scaled_lr
from canbench.data.gpu_pipeline import RESIZE_MODES
from canbench.data.pipeline import PretrainData
from canbench.methods import method_class
from canbench.runtime import resolve_device
from canbench.train.recipe import validate
from canbench.train.step import StepLevers, TrainStep

log = logging.getLogger("canbench.benchmarks.perf.throughput")

DATA_KINDS = ("synthetic", "builtin", "jpeg", "jpeg-gpu", "dali")
Batch = dict[str, torch.Tensor]


@dataclass
class ThroughputOptions:
    """What to time; ``None`` fields take device-dependent defaults (see :func:`resolve_options`)."""

    batch: int | None = None  # images per step (default: 128 on CUDA, 64 on CPU)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    steps: int = 10
    warmup: int = 3
    data: str = "synthetic"  # synthetic | builtin | jpeg:/path | jpeg-gpu:/path | dali:/path
    workers: int | None = None  # DataLoader workers for end-to-end modes (default data.num_workers)
    peak_flops: float | None = None  # MFU denominator, FLOP/s (None: measured on CUDA)
    resize: str = "interpolate"  # jpeg-gpu crop+resize: interpolate (reference filter) | roi_align
    data_only: bool = False  # time the input stream alone (no model step): can the pipeline feed the step?
    accum: int = 1  # optim.accum_steps: micro-batches per step (the gradient cache for CAN / SimCLR)
    # model-step levers (train.step.StepLevers), each switched alone by the device script
    compile_mode: str | None = None  # torch.compile mode (needs compile): max-autotune, reduce-overhead (CUDA graphs)
    adamw: str = "auto"  # auto (fused on CUDA) | fused | foreach | loop
    channels_last: bool = False  # 4-D parameters (patch embedding) channels-last
    compile_norm_mlp: bool = False  # eager step with each LayerNorm and MLP torch.compiled
    rng_cost: bool = False  # also time the counter-based RNG draws of one step against torch's generator

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device={self.device!r} is not one of 'auto', 'cpu', 'cuda'")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch={self.batch} must be >= 1")
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1")
        if self.accum < 1 or (self.batch is not None and self.batch % self.accum):
            raise ConfigError(f"accum={self.accum} must be >= 1 and divide batch={self.batch}")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup} must be >= 0")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers={self.workers} must be >= 0")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ConfigError(f"peak_flops={self.peak_flops} must be > 0")
        parse_data_spec(self.data)
        if self.resize not in ("interpolate", "roi_align"):
            raise ConfigError(f"resize={self.resize!r} is not one of 'interpolate', 'roi_align'")
        if self.compile_mode is not None and not self.compile:
            raise ConfigError(f"compile_mode={self.compile_mode!r} needs compile=True (--compile)")
        if self.compile_norm_mlp and self.compile:
            raise ConfigError("compile_norm_mlp=True is a lever of the eager step: drop compile=True (--compile)")
        self.levers()  # checks compile_mode and adamw
        if self.data_only and self.data == "synthetic":
            raise ConfigError("data_only=True times the data pipeline: pass data=builtin, jpeg:/path, jpeg-gpu:/path "
                              "or dali:/path")


    def levers(self) -> StepLevers:
        """The model-step levers these options switch."""
        return StepLevers(compile_mode=self.compile_mode, adamw=self.adamw, channels_last=self.channels_last,
                          compile_norm_mlp=self.compile_norm_mlp)


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"jpeg:/data/train"`` -> ``("jpeg", "/data/train")``; ``"synthetic"`` -> ``("synthetic", None)``."""
    kind, _, path = spec.partition(":")
    if kind not in DATA_KINDS:
        raise ConfigError(f"data={spec!r}: unknown kind {kind!r} (choose from synthetic, builtin, "
                          "jpeg:/path, jpeg-gpu:/path, dali:/path)")
    if kind in ("jpeg", "jpeg-gpu", "dali"):
        if not path:
            raise ConfigError(f"data={spec!r} needs a folder: {kind}:/path/to/train (an ImageFolder of JPEGs)")
        if not Path(path).is_dir():
            raise ConfigError(f"data={spec!r}: {path!r} is not a directory")
        return kind, path
    if path:
        raise ConfigError(f"data={spec!r}: {kind} takes no path")
    return kind, None


def resolve_options(opts: ThroughputOptions, device: torch.device) -> ThroughputOptions:
    """Fill the device-dependent defaults (batch)."""
    out = copy.copy(opts)
    if out.batch is None:
        out.batch = 128 if device.type == "cuda" else 64
    return out


def bench_config(cfg: Config, opts: ThroughputOptions, device: torch.device) -> Config:
    """A copy of ``cfg`` with the benchmark's batch, device and compile flag, validated."""
    cfg = copy.deepcopy(cfg)
    cfg.optim.batch_size = int(opts.batch)
    cfg.optim.accum_steps = int(opts.accum)
    cfg.train.device = device.type
    cfg.train.compile = "true" if opts.compile else "false"
    if opts.workers is not None:
        cfg.data.num_workers = opts.workers
    validate(cfg, check_paths=False)
    return cfg


# ---- inputs --------------------------------------------------------------------------------------


def synthetic_inputs(cfg: Config, batch: int, total_steps: int, device: torch.device) -> Iterator[Batch]:
    """Model-only inputs, made on the device up front: fixed normalised views, fresh seeds per step."""
    s = cfg.model.img_size
    g = torch.Generator(device="cpu").manual_seed(cfg.train.seed)
    views = torch.randn(method_class(cfg.method.name).num_views, batch, 3, s, s, generator=g).to(device)
    seeds = torch.arange(total_steps * batch, dtype=torch.int64).view(total_steps, batch).to(device)
    for i in range(total_steps):
        yield {"views": views, "seed": seeds[i]}  # indexing a device tensor: no host sync


def pipeline_config(cfg: Config, kind: str, path: str | None) -> Config:
    """``cfg`` with the data set the benchmark reads: the built-in set, or an ImageFolder of JPEGs decoded by
    the CPU workers (``jpeg``), on the device (``jpeg-gpu``) or in a DALI pipeline (``dali``)."""
    cfg = copy.deepcopy(cfg)
    if kind == "builtin":
        cfg.data.dataset, cfg.data.root, cfg.data.gpu_augment = "builtin", None, False
    else:
        cfg.data.dataset, cfg.data.root, cfg.data.gpu_augment = "imagefolder", path, kind == "jpeg-gpu"
        cfg.data.pipeline = "dali" if kind == "dali" else "torch"
        cfg.data.builtin_version = None
    return cfg


def make_inputs(cfg: Config, data: str, total_steps: int, device: torch.device,
                resize: str = "interpolate") -> Iterator[Batch]:
    """The input stream for ``data`` (see :data:`DATA_KINDS`): synthetic, or the trainer's own pipeline."""
    kind, path = parse_data_spec(data)
    if kind == "synthetic":
        return synthetic_inputs(cfg, cfg.optim.batch_size, total_steps, device)
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r} is not one of {RESIZE_MODES}")
    pipe = PretrainData(pipeline_config(cfg, kind, path))
    loader = pipe.loader(method_class(cfg.method.name).num_views, 0, total_steps,
                         pin_memory=cfg.data.pin_memory and device.type == "cuda")
    return pipe.model_inputs(iter(loader), device, resize)


# ---- timing --------------------------------------------------------------------------------------


def time_steps(step: Callable[[Batch], None], inputs: Iterator[Batch], steps: int, warmup: int,
               device: torch.device) -> tuple[list[float], float]:
    """Run ``warmup`` then ``steps`` steps; returns (per-step seconds of the timed steps, wall seconds).

    The input fetch of a step is inside its timed bracket (end-to-end modes include the pipeline).
    CUDA: events around each step, one ``synchronize`` after the last; no host sync in between.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        step(next(inputs))
    if cuda:
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    times: list[float] = []
    t0 = time.perf_counter()
    for i in range(steps):
        if cuda:
            starts[i].record()
            step(next(inputs))
            ends[i].record()
        else:
            t = time.perf_counter()
            step(next(inputs))
            times.append(time.perf_counter() - t)
    if cuda:
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    return times, time.perf_counter() - t0


def rng_cost_ms(cfg: Config, batch: int, device: torch.device, repeats: int = 20) -> dict[str, Any]:
    """Median ms of the random draws one training step of ``cfg``'s method makes, counter-based
    (:mod:`canbench.rng`: the mask noise of masking methods, CAN's sigma and pixel noise) against torch's
    own generator drawing the same shapes (what an implementation without per-sample seeds pays)."""
    from canbench.rng import STREAM_MASK, STREAM_NOISE, STREAM_SIGMA, counter_normal, counter_uniform

    m = cfg.method
    n = method_class(m.name).num_views * batch
    s, tokens = cfg.model.img_size, (cfg.model.img_size // cfg.model.patch_size) ** 2
    noise = m.noise_mode != "none" and m.sigma_max > 0
    seeds = torch.arange(n, dtype=torch.int64, device=device)

    def counter() -> None:
        if m.mask_ratio > 0:
            counter_uniform(seeds, (tokens,), STREAM_MASK)
        if noise:
            counter_uniform(seeds, (1,), STREAM_SIGMA)
            counter_normal(seeds, (3, s, s), STREAM_NOISE)

    def plain() -> None:
        if m.mask_ratio > 0:
            torch.rand(n, tokens, device=device)
        if noise:
            torch.rand(n, 1, device=device)
            torch.randn(n, 3, s, s, device=device)

    def median_ms(fn: Callable[[], None]) -> float:
        times, _ = time_steps(lambda _: fn(), iter(lambda: None, 0), repeats, 2, device)
        return 1e3 * statistics.median(times)

    return {"rng_draws": [k for k, on in (("mask", m.mask_ratio > 0), ("noise", noise)) if on],
            "rng_counter_ms": median_ms(counter), "rng_torch_ms": median_ms(plain)}


def _no_step(batch: Batch) -> None:
    """The step of a data-only run: the batch is produced (and on CUDA enqueued), nothing else."""


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def mfu_fields(achieved_flops: float, measured_peak: float | None, spec_peak: float | None) -> dict[str, float]:
    """``{"mfu_spec": ..., "mfu_measured": ...}`` for the peaks that are known (FLOP/s each)."""
    out = {}
    if spec_peak:
        out["mfu_spec"] = achieved_flops / spec_peak
    if measured_peak:
        out["mfu_measured"] = achieved_flops / measured_peak
    return out


def benchmark_method(cfg: Config, opts: ThroughputOptions, device: torch.device,
                     peak_flops: float | None, spec_flops: float | None = None) -> dict[str, Any]:
    """Time one method's training step; returns one result row (see module docstring for fields)."""
    from canbench.methods.flops import count_method_flops

    opts = resolve_options(opts, device)
    cfg = bench_config(cfg, opts, device)
    flops = count_method_flops(cfg)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if opts.data_only:
        step: Callable[[Batch], Any] = _no_step
    else:
        train_step = TrainStep(cfg, device, levers=opts.levers())
        lr = scaled_lr(cfg.optim.base_lr, cfg.optim.batch_size)
        step = lambda batch: train_step(batch, lr)  # noqa: E731 - the trainer's own step at a fixed lr
    inputs = make_inputs(cfg, opts.data, opts.warmup + opts.steps, device, opts.resize)
    times, wall = time_steps(step, inputs, opts.steps, opts.warmup, device)
    median = statistics.median(times)
    img_s = opts.batch / median
    achieved = flops["train"] * img_s
    row: dict[str, Any] = {
        "method": cfg.method.name, "arch": cfg.model.arch, "img_size": cfg.model.img_size,
        "patch_size": cfg.model.patch_size, "views": method_class(cfg.method.name).num_views, "batch": opts.batch,
        "accum": cfg.optim.accum_steps,
        "device": str(device), "precision": "-" if opts.data_only else train_step.precision,
        "compile": bool(opts.compile) and not opts.data_only, "data": opts.data, "data_only": opts.data_only,
        "workers": cfg.data.num_workers if opts.data != "synthetic" else 0,
        "steps": opts.steps, "warmup": opts.warmup,
        "img_per_s": img_s, "img_per_s_wall": opts.batch * opts.steps / wall,
        "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
        "fwd_gflop_per_img": flops["forward"] / 1e9, "train_gflop_per_img": flops["train"] / 1e9,
        "achieved_gflop_per_s": None if opts.data_only else achieved / 1e9,
        "compile_mode": opts.compile_mode, "adamw": opts.adamw, "channels_last": opts.channels_last,
        "compile_norm_mlp": opts.compile_norm_mlp,
    }
    if opts.rng_cost:
        row.update(rng_cost_ms(cfg, opts.batch, device))
    if device.type == "cuda":
        row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
        row["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
        if not opts.data_only:
            row.update(mfu_fields(achieved, peak_flops, spec_flops))
    else:  # MFU is omitted on CPU: there is no meaningful bf16 matmul peak to divide by
        row["peak_mem_bytes"] = _peak_rss_bytes()
        row["peak_mem_kind"] = "process max RSS"
    del step, inputs
    if not opts.data_only:
        del train_step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_throughput_suite(cfgs: dict[str, Config], opts: ThroughputOptions) -> dict[str, Any]:
    """Benchmark every config in ``cfgs`` (method -> Config) on one device; returns the full report."""
    from canbench.benchmarks.perf.hardware import describe_hardware, measure_matmul_peak, spec_peak

    device = resolve_device(opts.device)
    opts = resolve_options(opts, device)
    hw = describe_hardware(device)
    peak = opts.peak_flops
    peak_source = "given" if peak else None
    if peak is None and device.type == "cuda":
        peak = measure_matmul_peak(device, n=8192, dtype=torch.bfloat16)
        peak_source = "measured 8192^3 bf16 matmul"
    spec = spec_peak(hw.get("gpu_name")) if device.type == "cuda" else None
    spec_flops = spec.tflops * 1e12 if spec else None
    rows = []
    for name, cfg in cfgs.items():
        log.info("throughput: %s %s batch %d on %s (%s)", name, cfg.model.arch, opts.batch, device, opts.data)
        rows.append(benchmark_method(cfg, opts, device, peak if device.type == "cuda" else None, spec_flops))
    ref = next((r for r in rows if r["method"] == "can"), None)
    for r in rows:
        r["img_per_s_ratio_to_can"] = r["img_per_s"] / ref["img_per_s"] if ref else None
    cuda = device.type == "cuda"
    return {"hardware": hw, "options": asdict(opts), "peak_flops": peak if cuda else None,
            "peak_flops_source": peak_source if cuda else None,
            "spec_peak_flops": spec_flops, "spec_peak_card": spec.card if spec else None,
            "spec_peak_source": spec.source if spec else None, "rows": rows}


def _mem(b: int | None) -> str:
    return "-" if b is None else f"{b / 2 ** 30:.2f} GiB"


def format_throughput_table(report: dict[str, Any]) -> str:
    """The ``canbench throughput`` table plus a hardware line and the MFU denominator."""
    from canbench.benchmarks.perf.hardware import hardware_line

    rows = report["rows"]
    cpu = str(report["hardware"].get("device", "cpu")).startswith("cpu")
    head = ["method", "arch", "img", "batch", "accum", "prec", "compile", "data", "img/s", "img/s wall", "step ms",
            "train GFLOP/img", "GFLOP/s" if cpu else "TFLOP/s", "MFU spec", "MFU meas", "peak mem"]
    body = []
    for r in rows:
        rate = r["achieved_gflop_per_s"]
        rate_text = "-" if rate is None else f"{rate:.1f}" if cpu else f"{rate / 1e3:.1f}"
        body.append([r["method"], r["arch"], f"{r['img_size']}/{r['patch_size']}", str(r["batch"]),
                     str(r.get("accum", 1)), r["precision"],
                     "yes" if r["compile"] else "no", r["data"], f"{r['img_per_s']:.1f}",
                     f"{r['img_per_s_wall']:.1f}", f"{r['step_ms_median']:.1f}", f"{r['train_gflop_per_img']:.2f}",
                     rate_text,
                     f"{r['mfu_spec']:.3f}" if "mfu_spec" in r else "-",
                     f"{r['mfu_measured']:.3f}" if "mfu_measured" in r else "-", _mem(r.get("peak_mem_bytes"))])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.append(f"hardware: {hardware_line(report['hardware'])}")
    if report.get("peak_flops"):
        if report.get("spec_peak_flops"):
            lines.append(f"MFU spec: / {report['spec_peak_flops'] / 1e12:.1f} TFLOP/s, {report['spec_peak_card']} "
                         f"dense bf16 ({report['spec_peak_source']})")
        else:
            lines.append(f"MFU spec: omitted, {report['hardware'].get('gpu_name')!r} is not in the spec-peak table "
                         "(canbench.benchmarks.perf.hardware.SPEC_BF16_TFLOPS)")
        lines.append(f"MFU meas: / {report['peak_flops'] / 1e12:.1f} TFLOP/s ({report['peak_flops_source']})")
    else:
        lines.append("MFU: not reported on CPU (achieved GFLOP/s shown instead); peak mem = process max RSS")
    if rows and rows[0]["data"] == "synthetic":
        lines.append("img/s = batch / median step time (model step only: inputs already on the device)")
    elif rows and rows[0].get("data_only"):
        lines.append("data only: the input pipeline without a model step (FLOP columns do not apply)")
    return "\n".join(lines)


__all__ = ["DATA_KINDS", "ThroughputOptions", "benchmark_method", "format_throughput_table", "make_inputs",
           "mfu_fields", "parse_data_spec", "pipeline_config", "rng_cost_ms", "run_throughput_suite",
           "synthetic_inputs", "time_steps"]
