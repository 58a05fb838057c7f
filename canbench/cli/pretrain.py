"""``canbench pretrain`` and ``canbench presets``."""

from __future__ import annotations

import argparse

from canbench.config import ConfigError
from canbench.flags import add_config_args, check_folder_arg, path_arg
from canbench.rundir import RunBusyError, RunDir, describe_owner


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from canbench.train.recipe import build_config, preset_names
    from canbench.train.trainer import pretrain

    if not args.preset:
        raise ConfigError(f"pretrain needs --preset: one of {', '.join(preset_names())} (see `canbench presets`), "
                          "or a preset YAML file; e.g. --preset smoke for a CPU smoke run")
    check_folder_arg(args.out)
    cfg = build_config(args.method, args.preset, args.overrides)
    run = RunDir(args.out)
    if (holder := run.owner()) is not None:  # the trainer checks again when it takes the folder
        raise RunBusyError(f"{run.path} is in use by {describe_owner(holder)}: one trainer per run folder")
    if run.last_checkpoint.exists() and not args.resume and not args.force:
        raise ConfigError(f"{run.path} already holds a checkpoint: pass --resume to continue it or --force to "
                          "start over")
    summary = pretrain(cfg, run.path, resume=args.resume)
    final = summary.get("final", {})
    print(f"{args.method}: {summary.get('steps', summary.get('step'))} steps -> {run.path} "
          + " ".join(f"{k}={v:.4f}" for k, v in final.items()))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from canbench.methods import METHODS
    from canbench.train.recipe import list_presets

    rows = []
    for name, raw in list_presets().items():
        c = raw.get("config", {})
        mo, o = c.get("model", {}), c.get("optim", {})
        per = {m: (raw.get("methods") or {}).get(m, {}).get("optim", {}).get("base_lr", o.get("base_lr"))
               for m in METHODS}
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


def add_pretrain_parser(sub) -> None:
    """Register ``canbench pretrain`` and ``canbench presets``."""
    p = sub.add_parser("pretrain", help="pretrain one method into a run folder")
    p.add_argument("method", metavar="METHOD", help="a registered method: can, simclr, mae, ... (canbench.methods)")
    add_config_args(p, required=True)
    p.add_argument("--out", required=True, type=path_arg, help="run folder (config, metrics, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="start over even if the folder holds a checkpoint")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("presets", help="list presets with their key settings")
    p.set_defaults(func=_cmd_presets)
