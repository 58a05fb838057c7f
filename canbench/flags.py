"""The one flag layer: ``--preset``, ``--set``, ``--executor`` and ``--device``, declared once for every command.

Every command that builds a config takes ``--preset`` and any number of ``--set key.sub=value`` (values
are YAML); commands that launch jobs take ``--executor``; commands that compute take ``--device``. Errors
in what they name are :class:`~canbench.config.ConfigError`: the entry point prints
``canbench: error: <message>`` and exits 2, before any work (:func:`error`). Path flags expand ``~`` and
``$VAR`` (:func:`path_arg`), and every ``--help`` shows the defaults (:func:`use_help_formatter`).
"""

from __future__ import annotations

import argparse
import sys

from canbench.config import ConfigError, expand_path

EXECUTORS = ("slurm", "local", "debug")  # canbench.slurm.executors.BACKENDS (checked by a test)
EXIT_USAGE = 2
EXIT_NONFINITE = 3  # training stopped on a NaN / infinite loss (README "Exit codes")


def path_arg(value: str) -> str:
    """argparse ``type`` of every path flag: ``~`` and ``$VAR`` / ``${VAR}`` expanded (also when the shell left
    them, e.g. quoted or after ``--flag=``)."""
    return expand_path(value)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, d = action.help or "", action.default
        nothing = d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d)
        if nothing or "default" in text.lower() or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` for commands whose description / epilog is laid out by hand."""


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command parser below it :class:`HelpFormatter` (hand-laid-out ones keep
    their layout), so each ``--help`` shows the defaults."""
    if issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = RawDescriptionHelpFormatter
    else:
        parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                use_help_formatter(child)


def add_preset_flag(p: argparse.ArgumentParser, default: str | None, help: str | None = None,
                    required: bool = False) -> None:
    p.add_argument("--preset", default=default, type=path_arg,
                   help=help or "preset name (see `canbench presets`) or YAML path"
                   + (f" (default: {default})" if default else " (required)" if required else ""))


def add_set_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=help or "override a config key, e.g. --set method.mask_ratio=0.5 (repeatable; YAML values)")


def add_config_args(p: argparse.ArgumentParser, preset_default: str | None = None, required: bool = False) -> None:
    """--preset / --set, shared by every command that builds a config. ``required``: the command checks that
    --preset was given and names the presets when it was not (``pretrain``: never a silent smoke model)."""
    add_preset_flag(p, preset_default, required=required)
    add_set_flag(p)


def add_executor_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--executor", default=default, choices=EXECUTORS,
                   help=f"slurm (job array), local (this machine, no SLURM) or debug (in this process) "
                        f"(default: {default})")


def add_device_flag(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--device", default=default, help="auto (CUDA when available), cpu, cuda, cuda:N"
                   + (f" (default: {default})" if default else ""))


def check_folder_arg(path: str | None, flag: str = "--out") -> None:
    """ConfigError when ``path`` (a folder to write into) is an existing file or lies under one."""
    if path is None:
        return
    from pathlib import Path

    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            what = "is a file" if q == p else f"lies under {q}, which is a file"
            raise ConfigError(f"{flag} {path}: {what}; it must name a folder")
        if q.exists():
            return


def error(message: str) -> int:
    """Print ``canbench: error: <message>`` to stderr; returns the usage exit code (2)."""
    print(f"canbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


__all__ = ["EXECUTORS", "EXIT_NONFINITE", "EXIT_USAGE", "ConfigError", "HelpFormatter", "RawDescriptionHelpFormatter",
           "add_config_args", "add_device_flag", "add_executor_flag", "add_preset_flag", "add_set_flag",
           "check_folder_arg", "error", "path_arg", "use_help_formatter"]
