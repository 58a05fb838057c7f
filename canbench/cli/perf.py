"""``canbench flops`` and ``canbench throughput``: sub-commands registered by canbench.cli.

Both reuse :func:`canbench.flags.add_config_args` (``--preset`` / ``--set``) and build one config per
method with :func:`canbench.train.recipe.build_config`; ``--arch`` is a shorthand for ``--set model.arch=``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from canbench.config import ConfigError
from canbench.flags import add_config_args, add_device_flag

log = logging.getLogger("canbench.benchmarks")


def parse_methods(text: str | None) -> list[str]:
    """``"can,simclr"`` -> ``["can", "simclr"]`` (None: every registered method); names checked against the registry."""
    from canbench.methods import METHODS, method_class

    if text is None:
        return list(METHODS)
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--methods {text!r} names no method (choose from {', '.join(METHODS)})")
    for m in names:
        method_class(m, "--methods")
    return names


# Preset used when --preset is not given, by architecture. vit_micro exists for CPU smoke runs: its
# preset shrinks the decoder (2 x 128) and head (512); every other arch keeps the paper's model
# settings (decoder 8 x 512, head 4096-4096-128), which are ModelConfig's defaults.
DEFAULT_PRESETS = {"vit_micro": "smoke"}


def default_preset(arch: str | None, preset: str | None) -> str | None:
    """``preset`` if given, else the arch's entry of DEFAULT_PRESETS (arch None = ModelConfig's default)."""
    if preset:
        return preset
    from canbench.config import ModelConfig

    return DEFAULT_PRESETS.get(arch or ModelConfig().arch)


def method_configs(args: argparse.Namespace) -> dict[str, Any]:
    """One validated Config per ``--methods`` entry: method defaults <- preset <- --arch <- --set."""
    overrides = ([f"model.arch={args.arch}"] if args.arch else []) + list(args.overrides)
    preset = default_preset(args.arch, args.preset)
    from canbench.train.recipe import build_config

    return {m: build_config(m, preset, overrides, validate_paths=False) for m in parse_methods(args.methods)}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, help="model.arch shorthand (vit_micro, vit_tiny, vit_small, vit_base, "
                                                 "vit_large); default: the preset's")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every registered method)")
    add_config_args(p, preset_default=None)  # None: DEFAULT_PRESETS for the arch, else the paper's model
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


# ---- flops ----------------------------------------------------------------------------------------


def add_flops_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``canbench flops``."""
    p = subparsers.add_parser(
        "flops", help="FLOPs per image (forward, forward+backward) of each method",
        description="FLOPs per image of one training step (2 per multiply-add), counted with "
                    "torch.utils.flop_counter on the meta device with attention unfused; --fvcore adds "
                    "fvcore's forward count (runs the model on CPU) as a cross-check.")
    _common(p)
    p.add_argument("--fvcore", action="store_true", help="cross-check the forward count with fvcore (slower)")
    p.set_defaults(func=cmd_flops)
    return p


def format_flops_table(rows: list[dict[str, Any]]) -> str:
    """The ``canbench flops`` table (GFLOP per image; GMAC = GFLOP / 2) and the ratios between methods."""
    head = ["method", "arch", "img", "views", "fwd GFLOP/img", "fwd GMAC/img", "train GFLOP/img", "train/fwd",
            "train / CAN"]
    has_fv = any("fvcore_forward" in r for r in rows)
    if has_fv:
        head += ["fvcore fwd GFLOP", "fvcore diff"]
    body = []
    for r in rows:
        ratio = r.get("train_ratio_to_can")
        line = [r["method"], r["arch"], f"{r['img_size']}/{r['patch_size']}", str(r["views"]),
                f"{r['forward'] / 1e9:.2f}", f"{r['forward'] / 2e9:.2f}", f"{r['train'] / 1e9:.2f}",
                f"{r['train'] / r['forward']:.3f}", f"{ratio:.3f}" if ratio is not None else "-"]
        if has_fv:
            line += [f"{r['fvcore_forward'] / 1e9:.2f}", f"{100 * r['fvcore_rel_diff']:+.2f}%"] \
                if "fvcore_forward" in r else ["-", "-"]
        body.append(line)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    by = {r["method"]: r for r in rows}
    pairs = [(a, b) for a, b in (("simclr", "can"), ("can", "mae"), ("simclr", "mae")) if a in by and b in by]
    for a, b in pairs:
        lines.append(f"{a}/{b}: forward {by[a]['forward'] / by[b]['forward']:.3f}, "
                     f"train {by[a]['train'] / by[b]['train']:.3f}")
    return "\n".join(lines)


def _print(result: Any, fmt: Any, as_json: bool) -> int:
    """``result`` as indented JSON, or as the table ``fmt(result)``; exit code 0."""
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(fmt(result))
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    """Handler of ``canbench flops``; returns the exit code."""
    from canbench.methods.flops import method_flops_table

    rows = method_flops_table(method_configs(args), with_fvcore=args.fvcore)
    return _print(rows, format_flops_table, args.json)


# ---- throughput -----------------------------------------------------------------------------------


def add_throughput_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``canbench throughput``."""
    p = subparsers.add_parser(
        "throughput", help="images/s, step time, MFU and peak memory of the training step",
        description="Times the engine's training step (forward + backward + AdamW; bf16 autocast on GPU, "
                    "fp32 on CPU). --data synthetic (default) times the model step alone on inputs already "
                    "on the device; builtin, jpeg:/path, jpeg-gpu:/path and dali:/path time it end to end with "
                    "the data pipeline.")
    _common(p)
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 128 on GPU, 64 on CPU)")
    p.add_argument("--accum", type=int, default=1,
                   help="micro-batches per step (optim.accum_steps; CAN / SimCLR use the exact gradient cache)")
    add_device_flag(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the method (warm-up covers compilation)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--data", default="synthetic",
                   help="synthetic | builtin | jpeg:/path/to/train (ImageFolder of JPEGs, the PIL/CPU "
                        "pipeline) | jpeg-gpu:/path/to/train (bytes from workers, decode + augment on the device) "
                        "| dali:/path/to/train (the same workers feeding an NVIDIA DALI pipeline; canbench[dali])")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
    p.add_argument("--resize", default="interpolate", choices=("interpolate", "roi_align"),
                   help="jpeg-gpu only: crop+resize with the reference antialias filter (per view) or "
                        "torchvision roi_align (one call per image, area sampling)")
    p.add_argument("--data-only", action="store_true",
                   help="time the --data pipeline alone (no model step), to compare with the model-only img/s")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="measured-MFU denominator in TFLOP/s instead of measuring an 8192^3 bf16 matmul "
                        "(the spec-MFU denominator is the card's datasheet peak)")
    lever = p.add_argument_group("model-step levers (each off by default; the device script switches one at a time)")
    lever.add_argument("--compile-mode", default=None,
                       choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                       help="torch.compile mode (implies --compile); reduce-overhead = CUDA graphs")
    lever.add_argument("--adamw", default="auto", choices=("auto", "fused", "foreach", "loop"),
                       help="AdamW implementation (auto: fused on GPU, torch's default on CPU)")
    lever.add_argument("--channels-last", action="store_true",
                       help="4-D parameters (the patch embedding convolution) in channels-last layout")
    lever.add_argument("--compile-norm-mlp", action="store_true",
                       help="eager step with each LayerNorm and MLP torch.compiled (fused epilogues)")
    lever.add_argument("--rng-cost", action="store_true",
                       help="also time one step's counter-based random draws against torch's generator")
    p.set_defaults(func=cmd_throughput)
    return p


def cmd_throughput(args: argparse.Namespace) -> int:
    """Handler of ``canbench throughput``; returns the exit code."""
    from canbench.benchmarks.perf.throughput import ThroughputOptions, format_throughput_table, run_throughput_suite

    opts = ThroughputOptions(batch=args.batch, device=args.device, compile=args.compile or bool(args.compile_mode),
                             steps=args.steps,
                             warmup=args.warmup, data=args.data, workers=args.workers,
                             peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None,
                             resize=args.resize, data_only=args.data_only, accum=args.accum,
                             compile_mode=args.compile_mode, adamw=args.adamw, channels_last=args.channels_last,
                             compile_norm_mlp=args.compile_norm_mlp, rng_cost=args.rng_cost)
    return _print(run_throughput_suite(method_configs(args), opts), format_throughput_table, args.json)


__all__ = ["DEFAULT_PRESETS", "add_flops_parser", "add_throughput_parser", "cmd_flops", "cmd_throughput",
           "default_preset", "format_flops_table", "method_configs", "parse_methods"]
