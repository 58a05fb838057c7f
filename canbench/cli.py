"""The one command-line entry point: ``canbench <command>`` (also ``python -m canbench``).

Sub-commands of later stages register themselves through ``add_*_parser(subparsers)`` functions
in their own packages; launchers reuse :func:`build_parser`, they never redeclare flags.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from canbench.config import METHOD_NAMES, ConfigError, build_config, list_presets


def add_config_args(p: argparse.ArgumentParser, preset_default: str | None = "smoke") -> None:
    """--preset / --set, shared by every command that builds a config."""
    p.add_argument("--preset", default=preset_default, help="preset name (see `canbench presets`) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set method.mask_ratio=0.5 (repeatable)")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from canbench.methods.engine import pretrain

    cfg = build_config(args.method, args.preset, args.overrides)
    out = Path(args.out)
    ckpt = out / "checkpoints" / "last.pt"
    if ckpt.exists() and not args.resume and not args.force:
        raise ConfigError(f"{out} already holds a checkpoint: pass --resume to continue it or --force to start over")
    summary = pretrain(cfg, out, resume=args.resume)
    final = summary.get("final", {})
    print(f"{args.method}: {summary.get('steps', summary.get('step'))} steps -> {out} "
          + " ".join(f"{k}={v:.4f}" for k, v in final.items()))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    rows = []
    for name, raw in list_presets().items():
        c = raw.get("config", {})
        mo, o = c.get("model", {}), c.get("optim", {})
        per = {m: (raw.get("methods") or {}).get(m, {}).get("optim", {}).get("base_lr", o.get("base_lr"))
               for m in METHOD_NAMES}
        epochs = f"{o.get('epochs', '-')}{' IN-eq' if o.get('epoch_unit') == 'imagenet' else ''}"
        rows.append((name, raw.get("scale", "-"), mo.get("arch", "-"), str(mo.get("img_size", "-")),
                     str(o.get("batch_size", "-")), epochs,
                     " ".join(f"{m}:{v:g}" for m, v in per.items() if v is not None),
                     c.get("data", {}).get("dataset", "-"), raw.get("description", "")))
    head = ("preset", "scale", "arch", "img", "batch", "epochs", "base_lr", "data", "description")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head) - 1)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  " + head[-1])
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canbench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain one method into a run folder")
    p.add_argument("method", choices=METHOD_NAMES)
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="start over even if the folder holds a checkpoint")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("presets", help="list presets with their key settings")
    p.set_defaults(func=_cmd_presets)

    for module, fn in _EXTENSIONS:
        if importlib.util.find_spec(module) is None:  # that stage is not part of this checkout
            continue
        getattr(importlib.import_module(module), fn)(sub)  # a broken extension fails loudly
    return parser


# (module, function) pairs that add sub-commands; each takes the subparsers object.
_EXTENSIONS: list[tuple[str, str]] = [
    ("canbench.demo", "add_demo_parser"),
    ("canbench.evaluation.cli", "add_evaluate_parser"),
    ("canbench.slurm.cli", "add_grid_parser"),
    ("canbench.reports.cli", "add_report_parser"),
    ("canbench.reports.cli", "add_check_parser"),
    ("canbench.benchmarks.cli", "add_flops_parser"),
    ("canbench.benchmarks.cli", "add_throughput_parser"),
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"canbench: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"canbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
