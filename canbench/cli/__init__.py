"""The one command-line entry point: ``canbench <command>`` (also ``python -m canbench``).

Every sub-command lives in a module of this package and declares its flags through :mod:`canbench.flags`;
nothing outside ``canbench.cli`` imports it (it is the top of the import graph, docs/architecture.md).
"""

from __future__ import annotations

import argparse
import logging

from canbench.cli import demo, evaluate, grid, perf, pretrain, report
from canbench.config import ConfigError
from canbench.evaluation.runner import SuiteError
from canbench.flags import EXIT_NONFINITE, error, use_help_formatter
from canbench.train.logger import NonFiniteLossError


def package_version() -> str:
    """The installed distribution's version (package metadata), else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("canbench")
    except PackageNotFoundError:
        from canbench import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pretrain.add_pretrain_parser(sub)
    demo.add_demo_parser(sub)
    evaluate.add_evaluate_parser(sub)
    grid.add_grid_parser(sub)
    report.add_report_parser(sub)
    report.add_check_parser(sub)
    perf.add_flops_parser(sub)
    perf.add_throughput_parser(sub)
    use_help_formatter(parser)  # every --help shows the defaults
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as exc:  # bad input named by the message: usage error, exit 2
        return error(str(exc))
    except SuiteError as exc:  # part of a suite failed; what succeeded was written
        error(str(exc))
        return 1
    except NonFiniteLossError as exc:  # the run diverged: status.json says failed; the message names step and term
        error(str(exc))
        return EXIT_NONFINITE


if __name__ == "__main__":
    raise SystemExit(main())
