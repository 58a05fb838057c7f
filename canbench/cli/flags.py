"""The one flag layer: ``--preset``, ``--set``, ``--executor``, ``--device``, declared once for every command."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, preset_default: str | None = "smoke") -> None:
    """--preset / --set, shared by every command that builds a config."""
    p.add_argument("--preset", default=preset_default, help="preset name (see `canbench presets`) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set method.mask_ratio=0.5 (repeatable)")
