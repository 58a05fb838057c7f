"""The one flag layer: ``--preset``, ``--set``, ``--executor`` and ``--device``, declared once for every command.

Every command that builds a config takes ``--preset`` and any number of ``--set key.sub=value`` (values
are YAML); commands that launch jobs take ``--executor``; commands that compute take ``--device``. Errors
in what they name are :class:`~canbench.config.ConfigError`: the entry point prints
``canbench: error: <message>`` and exits 2, before any work (:func:`error`).
"""

from __future__ import annotations

import argparse
import sys

from canbench.config import ConfigError

EXECUTORS = ("slurm", "local", "debug")  # canbench.slurm.executors.BACKENDS (checked by a test)
EXIT_USAGE = 2


def add_preset_flag(p: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    p.add_argument("--preset", default=default,
                   help=help or "preset name (see `canbench presets`) or YAML path"
                   + (f" (default: {default})" if default else ""))


def add_set_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=help or "override a config key, e.g. --set method.mask_ratio=0.5 (repeatable; YAML values)")


def add_config_args(p: argparse.ArgumentParser, preset_default: str | None = "smoke") -> None:
    """--preset / --set, shared by every command that builds a config."""
    add_preset_flag(p, preset_default)
    add_set_flag(p)


def add_executor_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--executor", default=default, choices=EXECUTORS,
                   help=f"slurm (job array), local (this machine, no SLURM) or debug (in this process); "
                        f"default {default}")


def add_device_flag(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--device", default=default, help="auto (CUDA when available), cpu, cuda, cuda:N")


def error(message: str) -> int:
    """Print ``canbench: error: <message>`` to stderr; returns the usage exit code (2)."""
    print(f"canbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


__all__ = ["EXECUTORS", "EXIT_USAGE", "ConfigError", "add_config_args", "add_device_flag", "add_executor_flag",
           "add_preset_flag", "add_set_flag", "error"]
