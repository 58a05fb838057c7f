"""Protocol fingerprints (docs/reports.md): every result records how it was produced.

Two results are compared only when their fingerprints agree on the fields that matter for the
comparison; :func:`mismatches` says which fields differ so tables and checks can say why not.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import canbench


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git SHA of the checkout (``+dirty`` when modified), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            raise OSError
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"canbench-{canbench.__version__}"


def environment() -> dict[str, Any]:
    """Library versions and the device the result was computed on."""
    import timm
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "device_type": "cuda" if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 1,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


# Fields that never make two results incomparable on their own (they are recorded, not matched).
INFORMATIONAL = frozenset({"code_version", "torch", "torchvision", "timm", "device_type", "device_count",
                           "device_name", "created"})


def protocol_fingerprint(**fields: Any) -> dict[str, Any]:
    """A fingerprint: the protocol fields given plus the environment."""
    fp = dict(fields)
    fp.update(environment())
    return fp


def mismatches(a: dict[str, Any], b: dict[str, Any], keys: list[str] | None = None) -> dict[str, tuple]:
    """Fields (``keys``, or all non-informational ones present in either) on which a and b differ."""
    if keys is None:
        keys = sorted((set(a) | set(b)) - INFORMATIONAL)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}
