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
from canbench.flags import error
from canbench.io import write_text

log = logging.getLogger(__name__)


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``canbench report RUNS_DIR [--out PATH] [--benchmark NAME] [--format pdf|md|csv|tex]``."""
    p = subparsers.add_parser(
        "report", help="tables, figures, claims scorecard of a results folder (PDF, Markdown, CSV or LaTeX)",
        description="Collect every run under RUNS_DIR and render the paper's tables (paper value, reproduced "
                    "mean ± std, difference), figures and the claims scorecard.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="results root (run folders at any depth)")
    p.add_argument("--out", default=None,
                   help="output file (pdf: default reports/out/report.pdf; md/csv/tex: default stdout)")
    p.add_argument("--benchmark", default=None, help="only this benchmark (table1..table5, fig6, fig7, smoke, ...)")
    p.add_argument("--format", default="pdf", choices=("pdf", "md", "csv", "tex"), dest="fmt")
    p.add_argument("--title", default="canbench reproduction report", help="PDF title")
    p.add_argument("--against", default=None, metavar="paper|BASELINE.csv",
                   help="also run the regression check and include its summary")
    p.add_argument("--k", type=float, default=3.0, help="seed-std multiplier of the check tolerance")
    p.add_argument("--flops-table", default=None, metavar="CSV",
                   help="FLOPs per image (columns method, arch, flops) for the FLOPs-ratio claim, instead of "
                        "the runs' summary.json")
    p.set_defaults(func=report_command)
    return p


def add_check_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``canbench check RUNS_DIR --against paper|BASELINE.csv [--k 3] [--json] [--write-baseline PATH]``."""
    p = subparsers.add_parser(
        "check", help="regression check against the paper or a baseline CSV (exit 0 pass, 1 regression, "
                      "2 nothing comparable)",
        description="Compare every reproduced cell with the paper's numbers or a baseline CSV. Exit codes: "
                    "0 every compared cell passes, 1 any regression, 2 nothing comparable (never a silent pass).")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="results root (run folders at any depth)")
    p.add_argument("--against", default=None, metavar="paper|BASELINE.csv",
                   help="reference: 'paper' or a baseline CSV written by --write-baseline")
    p.add_argument("--k", type=float, default=3.0, help="widen tolerances to k x seed std (default 3)")
    p.add_argument("--abs-tol", type=float, default=None, help="absolute tolerance for every metric")
    p.add_argument("--benchmark", default=None, help="only runs of this benchmark")
    p.add_argument("--json", action="store_true", help="print a JSON document (for CI) instead of text")
    p.add_argument("--write-baseline", default=None, metavar="PATH",
                   help="write the aggregated results as a baseline CSV (then check it only if --against is given)")
    p.set_defaults(func=check_command)
    return p


def _runs_dir(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"results folder {root} does not exist")
    return root


def _results(runs_dir: str, benchmark: str | None):
    from canbench.reports.collect import collect

    df = collect(runs_dir)
    if benchmark is not None:
        df = df[df["benchmark"] == benchmark]
    return df


def report_command(args: argparse.Namespace) -> int:
    """Handler of ``canbench report``; returns 0, or 2 when RUNS_DIR is not a folder."""
    root = _runs_dir(args.runs_dir)
    flops_table = None
    if args.flops_table:
        import pandas as pd

        if not Path(args.flops_table).is_file():
            raise ConfigError(f"--flops-table {args.flops_table} does not exist")
        flops_table = pd.read_csv(args.flops_table)
    check_result = None
    if args.against:
        from canbench.reports.check import check

        check_result = check(_results(args.runs_dir, args.benchmark), args.against, k=args.k)
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


def check_command(args: argparse.Namespace) -> int:
    """Handler of ``canbench check``: 0 all pass, 1 any regression, 2 nothing comparable (or bad input)."""
    from canbench.reports.check import EXIT_NOTHING_COMPARABLE, BaselineError, check, write_baseline

    _runs_dir(args.runs_dir)
    if not args.against and not args.write_baseline:
        raise ConfigError("check: give --against paper|BASELINE.csv and/or --write-baseline PATH")
    results = _results(args.runs_dir, args.benchmark)
    try:
        if args.write_baseline:
            df = write_baseline(results, args.write_baseline)
            stream = sys.stderr if args.json else sys.stdout
            print(f"wrote baseline {args.write_baseline} ({len(df)} cells)", file=stream)
            if not args.against:
                return 0
        result = check(results, args.against, k=args.k, abs_tol=args.abs_tol)
    except BaselineError as e:
        if args.json:  # CI reads stdout: the error as JSON there too
            print(json.dumps({"exit_code": EXIT_NOTHING_COMPARABLE, "error": str(e)}))
        return error(str(e))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(result.message)
    return result.exit_code
