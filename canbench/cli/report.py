"""``canbench report`` and ``canbench check``.

Handlers take the parsed ``argparse.Namespace`` and return the process exit code; bad input raises
:class:`~canbench.config.ConfigError` (``canbench: error: ...``, exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from canbench.config import ConfigError
from canbench.flags import error, path_arg
from canbench.io import write_text

log = logging.getLogger(__name__)


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``canbench report RUNS_DIR [--out PATH] [--benchmark NAME] [--format pdf|md|csv|tex]``."""
    p = subparsers.add_parser(
        "report", help="tables, figures, claims scorecard of a results folder (PDF, Markdown, CSV or LaTeX)",
        description="Collect every run under RUNS_DIR and render the paper's tables (paper value, reproduced "
                    "mean ± std, difference), figures and the claims scorecard.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", type=path_arg, help="results root (run folders at any depth)")
    p.add_argument("--out", default=None, type=path_arg,
                   help="output file (pdf: default reports/out/report.pdf; md/csv/tex: default stdout)")
    p.add_argument("--benchmark", default=None, help="only this benchmark (table1..table5, fig6, fig7, smoke, ...)")
    p.add_argument("--format", default="pdf", choices=("pdf", "md", "csv", "tex"), dest="fmt",
                   help="pdf (tables, figures, claims), md, csv or tex")
    p.add_argument("--title", default="canbench reproduction report", help="PDF title")
    p.add_argument("--against", default=None, metavar="paper|BASELINE.csv", type=path_arg,
                   help="also run the reproduction check (of --benchmark's cells, if given) and include it")
    p.add_argument("--flops-table", default=None, type=path_arg, metavar="CSV",
                   help="FLOPs per image (columns method, arch, flops) for the FLOPs-ratio claim, instead of "
                        "the runs' summary.json")
    p.set_defaults(func=report_command)
    return p


def add_check_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``canbench check RUNS_DIR --against paper|BASELINE.csv [--benchmark B]... [--alpha A] [--json]
    [--write-baseline PATH]``."""
    p = subparsers.add_parser(
        "check", help="reproduction check against the paper or a baseline CSV (exit 0 every reference cell "
                      "passes, 1 otherwise, 2 usage error)",
        description="Judge every cell of the reference (the paper's Tables 1-5 and Fig. 1, or a baseline CSV) on "
                    "the runs under RUNS_DIR: pass, regression, improvement, inconclusive (noise too large to "
                    "tell), incomparable (names the differing key), missing, invalid (NaN / unreadable result) or "
                    "stale (made from another checkpoint). Tolerances come from the reference's seeds or the "
                    "documented noise floors (docs/reports.md). Exit codes: 0 every reference cell passes, 1 "
                    "otherwise, 2 usage errors.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", type=path_arg, help="results root (run folders at any depth)")
    p.add_argument("--against", default=None, metavar="paper|BASELINE.csv", type=path_arg,
                   help="reference: 'paper' or a baseline CSV written by --write-baseline")
    p.add_argument("--benchmark", action="append", default=None, metavar="NAME",
                   help="narrow the reference (and the runs) to this benchmark's cells (table1..table5, smoke...; "
                        "table2 includes Fig. 1's finetune cells); repeatable. Without it every reference cell "
                        "must be reproduced")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise false-alarm rate, split over the reference cells (default 0.05)")
    p.add_argument("--json", action="store_true", help="print a JSON document (for CI) instead of text")
    p.add_argument("--write-baseline", default=None, type=path_arg, metavar="PATH",
                   help="write the aggregated results as a baseline CSV (then check it only if --against is given)")
    p.set_defaults(func=check_command)
    return p


def _runs_dir(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"RUNS_DIR {root}: results folder does not exist (or is not a folder); give the folder "
                          "that holds the run folders (e.g. runs/)")
    return root


def _check_against(against: str | None) -> None:
    """``--against``: 'paper' or an existing baseline CSV, checked before any run folder is read."""
    if against and against != "paper" and not Path(against).is_file():
        raise ConfigError(f"--against {against}: baseline file does not exist (give 'paper' or a CSV written by "
                          "`canbench check --write-baseline`)")


def _results(runs_dir: str, benchmark: str | None):
    from canbench.reports.collect import collect

    df = collect(runs_dir)
    if benchmark is not None:
        df = df[df["benchmark"] == benchmark]
    return df


def report_command(args: argparse.Namespace) -> int:
    """Handler of ``canbench report``; returns 0, or 2 when RUNS_DIR is not a folder."""
    root = _runs_dir(args.runs_dir)
    _check_against(args.against)
    flops_table = None
    if args.flops_table:
        import pandas as pd

        if not Path(args.flops_table).is_file():
            raise ConfigError(f"--flops-table {args.flops_table} does not exist")
        flops_table = pd.read_csv(args.flops_table)
    check_result = None
    if args.against:
        check_result = _check(args.runs_dir, args.against, [args.benchmark] if args.benchmark else None)
    if args.fmt == "pdf":
        from canbench.reports.pdf import build_report

        out = Path(args.out or "reports/out/report.pdf")
        build_report(root, out, benchmark=args.benchmark, title=args.title, check_result=check_result,
                     flops_table=flops_table)
        print(f"wrote {out}")
        return 0
    from canbench.reports.claims import claims_markdown, evaluate_claims
    from canbench.reports.collect import collect_pretrain
    from canbench.reports.tables import build_views, render

    results = _results(args.runs_dir, args.benchmark)
    text = render(build_views(results, benchmark=args.benchmark), args.fmt)
    if args.fmt == "md":
        pretrain = collect_pretrain(root)
        if args.benchmark is not None:
            pretrain = pretrain[pretrain["benchmark"] == args.benchmark]
        text += "\n" + claims_markdown(evaluate_claims(results, pretrain, flops_table))
        if check_result is not None:
            from canbench.reports.check import check_markdown

            text += "\n" + check_markdown(check_result)
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _check(runs_dir: str, against: str, benchmarks: list[str] | None, alpha: float = 0.05):
    from canbench.reports.check import BaselineError, check
    from canbench.reports.collect import collect

    try:
        return check(collect(runs_dir), against, benchmarks=benchmarks, alpha=alpha)
    except (BaselineError, ValueError) as e:
        raise ConfigError(str(e)) from None


def check_command(args: argparse.Namespace) -> int:
    """Handler of ``canbench check``: 0 every reference cell passes, 1 otherwise, 2 bad input."""
    from canbench.reports.check import EXIT_USAGE, BaselineError, write_baseline

    _runs_dir(args.runs_dir)
    if not args.against and not args.write_baseline:
        raise ConfigError("check: give --against paper|BASELINE.csv and/or --write-baseline PATH")
    try:
        _check_against(args.against)  # before any run folder is read
        if args.write_baseline:
            df = write_baseline(_results(args.runs_dir, None), args.write_baseline)
            stream = sys.stderr if args.json else sys.stdout
            print(f"wrote baseline {args.write_baseline} ({len(df)} cells)", file=stream)
            if not args.against:
                return 0
        result = _check(args.runs_dir, args.against, args.benchmark, args.alpha)
    except (BaselineError, ConfigError) as e:
        if args.json:  # CI reads stdout: the error as JSON there too
            print(json.dumps({"exit_code": EXIT_USAGE, "error": str(e)}))
        return error(str(e))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(result.message)
    return result.exit_code
