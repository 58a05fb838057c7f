"""``canbench grid submit|status|cancel|plan SPEC``: run a paper grid on SLURM, locally or in-process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from canbench.config import SCALES
from canbench.flags import add_executor_flag, add_set_flag, path_arg
from canbench.slurm.spec import load_spec, resolve_spec_path

SET_HELP = ("config override for every run (optim.max_steps=6) or resource (slurm.partition=gpu, slurm.account=..., "
            "slurm.timeout_min=..., slurm.tasks_per_node=...); repeatable")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=path_arg,
                   help="grid YAML (benchmarks/grids/paper/fig6_masking_rate.yaml) or a packaged spec name")
    p.add_argument("--scale", default="smoke", choices=SCALES, help="scale profile of the spec (default: smoke)")
    p.add_argument("--root", default=None, metavar="RUNS_DIR", type=path_arg,
                   help="run store of this grid and scale (default: runs/<grid name>/<scale>)")


def _root(args: argparse.Namespace, spec) -> Path:
    from canbench.slurm.runstore import default_root

    return Path(args.root) if args.root else default_root(spec.name, args.scale)


def _cmd_submit(args: argparse.Namespace) -> int:
    from canbench.slurm.control import submit_grid
    from canbench.slurm.runstore import format_table

    spec = load_spec(resolve_spec_path(args.spec))
    report = submit_grid(spec, scale=args.scale, executor=args.executor, root=args.root,
                         overrides=args.overrides, retry_failed=args.retry_failed, wait=args.wait, store=args.store)
    print(report.summary())
    if args.wait or args.executor == "debug":
        from canbench.slurm.control import status_grid

        df = status_grid(report.root)
        print(format_table(df))
        return 0 if len(df) and (df["state"] == "done").all() else 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from canbench.slurm.control import status_grid
    from canbench.slurm.runstore import STATUS_COLUMNS, format_table

    spec = load_spec(resolve_spec_path(args.spec))
    root = _root(args, spec)
    df = status_grid(root)
    if args.csv:
        df.to_csv(sys.stdout, index=False)
        return 0
    cols = tuple(df.columns) if args.all and len(df) else STATUS_COLUMNS
    print(f"{spec.name} ({args.scale}) in {root}")
    print(format_table(df, cols))
    if args.failed and len(df):
        from canbench.rundir import RunDir

        for folder in df.loc[df["state"] == "failed", "folder"]:
            st = RunDir(folder).read_status()
            print(f"\n== {Path(folder).name}: {st.get('reason')}\n{st.get('traceback', '')}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from canbench.slurm.control import cancel_grid

    spec = load_spec(resolve_spec_path(args.spec))
    done = cancel_grid(_root(args, spec))
    print(f"cancelled {len(done)} runs" + "".join(f"\n  {d.name}" for d in done))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from canbench.slurm.control import plan

    spec = load_spec(resolve_spec_path(args.spec))
    runs, root, res = plan(spec, args.scale, args.overrides, args.executor, args.root)
    print(f"{spec.name} ({args.scale}): {len(runs)} runs -> {root}; world size {res.world_size}; "
          f"resources {({k: v for k, v in res.values.items() if v is not None})}")
    for r in runs:
        suites = ",".join(r.suites) or "-"
        print(f"  {r.folder_name}  preset={r.cfg.extra.preset}  axes={r.axes}  suites={suites}")
    return 0


def add_grid_parser(subparsers) -> None:
    """Register ``canbench grid ...`` (called by canbench.cli.build_parser)."""
    g = subparsers.add_parser("grid", help="submit / inspect / cancel a paper grid (SLURM, local or in-process)",
                              description=__doc__)
    sub = g.add_subparsers(dest="grid_command", required=True, metavar="ACTION")

    p = sub.add_parser("submit", help="submit every run that is not done or running (idempotent)")
    _common(p)
    add_executor_flag(p, "slurm")
    add_set_flag(p, help=SET_HELP)
    p.add_argument("--retry-failed", action="store_true", help="also resubmit failed runs (from their checkpoint)")
    p.add_argument("--wait", action="store_true", help="block until every run has finished, then print the table")
    p.add_argument("--store", default=None, metavar="DIR",
                   help="grids whose roots share DIR train each distinct config once (default: runs/ for the default "
                        "roots, else --root itself; docs/grid.md)")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("status", help="table of runs: state, step, last loss, job id, log path")
    _common(p)
    p.add_argument("--all", action="store_true", help="every column (axes, final losses, suites, folder)")
    p.add_argument("--csv", action="store_true", help="the full table as CSV on stdout")
    p.add_argument("--failed", action="store_true", help="also print the reason and traceback of failed runs")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel the grid's queued and running jobs")
    _common(p)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("plan", help="expand and validate the grid; list its runs without submitting")
    _common(p)
    add_executor_flag(p, "slurm")
    add_set_flag(p, help=SET_HELP)
    p.set_defaults(func=_cmd_plan)


__all__ = ["add_grid_parser", "resolve_spec_path"]
