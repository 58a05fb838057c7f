"""``canbench evaluate {linear,knn,fewshot,finetune,shift,all}``: evaluate a checkpoint, store and print the results.

Examples::

    canbench evaluate linear   --checkpoint runs/can-smoke
    canbench evaluate fewshot  --checkpoint runs/can-smoke --set fewshot.shots=[1,5,10,25]
    canbench evaluate finetune --checkpoint runs/can-b --preset vit_b_in1k --set data.root=/datasets/imagenet
    canbench evaluate shift    --checkpoint runs/can-b/finetune --set shift.roots.objectnet=/datasets/objectnet-1.0
    canbench evaluate linear   --checkpoint mae_pretrain_vit_base.pth --format mae --out runs/mae-public \\
                               --set data.root=/datasets/imagenet

Results go to ``<out>/eval/<suite>.json`` (``--out`` defaults to the run folder). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from canbench.config import SUITES
from canbench.evaluation.recipes import PROFILES
from canbench.flags import add_device_flag, add_preset_flag, add_set_flag, check_folder_arg, path_arg

EPILOG = """settings (--set SECTION.KEY=VALUE, repeatable; values are YAML, e.g. [1,5,10,25]):
  data.dataset|root|val_root|train_size|test_size     linear / kNN / finetune data (default: the run's)
  linear.<LinearProbeConfig field>, linear.protocol  e.g. linear.epochs=90, linear.mode=full
  knn.k|temperature                                   fewshot.datasets|shots|seeds|head|root|roots.<name>
  finetune.<FinetuneConfig field>, finetune.protocol  shift.sets|roots.<set>|checkpoint|options.<key>
  model.arch|img_size|patch_size|class_token|pool     public checkpoints (--format) only; pool: MAE's cls token
--preset: an evaluation profile (smoke, small, paper, mae), a pretraining preset (its scale) or an eval YAML file.
Exit code 2 on a bad setting or a missing data root (checked before any work)."""


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``canbench evaluate`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint: linear, knn, fewshot, finetune, shift or all",
        description="Evaluate a checkpoint with one suite (or all); results go to <out>/eval/<suite>.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES + ("all",), help="the suite to run (all: every suite)")
    p.add_argument("--checkpoint", required=True, metavar="PATH", type=path_arg,
                   help="run folder, canbench checkpoint file, finetune folder (shift), or a public checkpoint "
                        "with --format")
    p.add_argument("--format", dest="fmt", choices=("mae", "timm"), default=None,
                   help="the checkpoint is public MAE (facebookresearch/mae) or timm ViT weights")
    p.add_argument("--arch", default=None, help="ViT size of a public checkpoint (vit_base, ...; default: read "
                                                "from the weights)")
    p.add_argument("--out", default=None, metavar="DIR", type=path_arg,
                   help="results folder: DIR/eval/<suite>.json (default: the run folder; required for public "
                        "checkpoints)")
    add_preset_flag(p, None, help=f"evaluation profile ({', '.join(PROFILES)}), pretraining "
                                                  "preset, or eval YAML file (default: from the run config)")
    add_set_flag(p, help="evaluation setting, e.g. --set linear.epochs=90 (repeatable)")
    p.add_argument("--force", action="store_true", help="recompute suites that already have an up-to-date result")
    add_device_flag(p)
    p.add_argument("--json", action="store_true", help="print the result records as JSON instead of a table")
    p.set_defaults(func=_cmd_evaluate)
    return p


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from canbench.evaluation.runner import evaluate
    from canbench.evaluation.source import resolve_source

    check_folder_arg(args.out)
    source = resolve_source(args.checkpoint, fmt=args.fmt, arch=args.arch)
    if source.kind == "external" and args.out is None:
        from canbench.config import ConfigError

        raise ConfigError(f"--out DIR is required for a public checkpoint ({args.checkpoint})")
    records = evaluate(source, [args.suite], args.out, preset=args.preset, overrides=args.overrides,
                       force=args.force, device=args.device)
    if args.json:
        json.dump(records, sys.stdout, indent=2, sort_keys=True, default=str)
        print()
    else:
        print(format_table(records))
    return 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def metric_rows(suite: str, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows worth printing for one suite's metrics."""
    rows: list[tuple[str, str]] = []
    if suite == "fewshot":
        for r in metrics.get("results", []):
            rows.append((f"{r['dataset']} {r['shots']}-shot", f"{r['mean']:.2f} ± {r['std']:.2f}"))
        return rows
    if suite == "shift":
        for r in metrics.get("results", []):
            key = "mCE" if "mCE" in r else "top1"
            rows.append((f"{r['set']} {key}", _fmt(r[key])))
        if "mean_shifted_top1" in metrics:
            rows.append(("mean shifted top1", _fmt(metrics["mean_shifted_top1"])))
        return rows
    for key in ("top1", "top5", "top1_best"):
        if key in metrics:
            rows.append((key, _fmt(metrics[key])))
    return rows


def format_table(records: dict[str, dict[str, Any]]) -> str:
    """A short plain-text table: suite, data set, metric, value, and where each result is stored."""
    lines = []
    head = ("suite", "dataset", "metric", "value")
    rows = []
    for suite, rec in records.items():
        ds = rec.get("fingerprint", {}).get("dataset")
        ds = ",".join(ds) if isinstance(ds, list) else str(ds)
        if len(ds) > 28:
            ds = ds[:25] + "..."
        mark = " (cached)" if rec.get("skipped") else ""
        for name, val in metric_rows(suite, rec.get("metrics", {})):
            rows.append((suite + mark, ds, name, val))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for suite, rec in records.items():
        lines.append(f"{suite}: {rec.get('path')}" + (" (up to date, not recomputed; --force reruns)"
                                                     if rec.get("skipped") else ""))
    return "\n".join(lines)


__all__ = ["add_evaluate_parser", "format_table", "metric_rows"]
