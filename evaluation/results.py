"""Evaluation results on disk: ``<run_dir>/eval/<suite>.json``, written atomically, with fingerprints.

A result records the metrics, the protocol fingerprint (docs/reports.md) and the checkpoint it was
computed from. :func:`is_done` lets ``canbench evaluate`` skip suites already finished with the same
protocol (and the same checkpoint, when given); a result whose fingerprint differs is not done, and neither
is one that cannot be read (a file torn by a crash): it is recomputed, with a warning naming it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from canbench.fingerprint import mismatches, protocol_fingerprint
from canbench.io import file_sha256, read_json, write_json
from canbench.rundir import RunDir

log = logging.getLogger(__name__)


def result_path(run_dir: str | Path, suite: str) -> Path:
    """``<run_dir>/eval/<suite>.json`` (:meth:`canbench.rundir.RunDir.result_path`)."""
    return RunDir(run_dir).result_path(suite)


def resize_crop_rule(img_size: int, crop_pct: float) -> str:
    """Human-readable eval preprocessing, e.g. ``resize256_bicubic_center224`` for S = 224."""
    from canbench.evaluation.transforms import resize_size

    return f"resize{resize_size(img_size, crop_pct)}_bicubic_center{img_size}"


def suite_fingerprint_fields(*, pooling: str, head_bn: bool | None, mean: Sequence[float],
                             std: Sequence[float], img_size: int, resize_crop: str,
                             effective_batch: int | None, lr_scaling: str | None, epochs: float | None,
                             metric: str, class_subset_rule: str, seeds: Sequence[int] | None,
                             sampler_padding: str = "none", dataset: str | Sequence[str] | None = None,
                             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The protocol fields every suite records (environment fields are added by :func:`make_fingerprint`).

    ``dataset``: the evaluated data set's name (a list for suites over several sets, e.g. few-shot or
    shift); None when the caller does not know it. Reports compare cells only on equal datasets.
    """
    fields: dict[str, Any] = {
        "dataset": dataset if dataset is None or isinstance(dataset, str) else list(dataset),
        "pooling": pooling, "head_bn": head_bn, "norm_mean": [float(m) for m in mean],
        "norm_std": [float(s) for s in std], "img_size": int(img_size), "resize_crop": resize_crop,
        "sampler_padding": sampler_padding, "effective_batch": effective_batch, "lr_scaling": lr_scaling,
        "epochs": epochs, "metric": metric, "class_subset_rule": class_subset_rule,
        "seeds": list(seeds) if seeds is not None else None,
    }
    for k, v in (extra or {}).items():
        if k in fields:
            raise ValueError(f"extra fingerprint field {k!r} would overwrite a protocol field")
        fields[k] = v
    return fields


def make_fingerprint(fields: dict[str, Any]) -> dict[str, Any]:
    """Protocol fields + environment (code version, torch/timm/torchvision, device type and count)."""
    return protocol_fingerprint(**fields)


def checkpoint_info(path: str | Path | None, step: int | None = None) -> dict[str, Any]:
    """``{"path", "sha256", "step"}`` of the evaluated checkpoint (all None for e.g. a random init)."""
    if path is None:
        return {"path": None, "sha256": None, "step": step}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return {"path": str(p.resolve()), "sha256": file_sha256(p), "step": step}


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so fresh and reloaded fingerprints compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def write_result(run_dir: str | Path, suite: str, metrics: dict[str, Any], fingerprint: dict[str, Any],
                 checkpoint_info: dict[str, Any]) -> Path:
    """Atomically write ``<run_dir>/eval/<suite>.json``; returns its path."""
    missing = {"path", "sha256", "step"} - set(checkpoint_info)
    if missing:
        raise ValueError(f"checkpoint_info lacks keys {sorted(missing)} (need path, sha256, step)")
    path = result_path(run_dir, suite)
    record = {
        "suite": suite,
        "metrics": _plain(metrics),
        "fingerprint": _plain(fingerprint),
        "checkpoint": {k: checkpoint_info[k] for k in ("path", "sha256", "step")},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(path, record)
    return path


def read_result(run_dir: str | Path, suite: str) -> dict[str, Any] | None:
    """The stored result of ``suite`` or None; a malformed file raises naming its path."""
    path = result_path(run_dir, suite)
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"evaluation result {path} is not valid JSON: {e}") from None
    if not isinstance(rec, dict):
        raise ValueError(f"evaluation result {path}: expected a JSON object, got {type(rec).__name__}")
    for key in ("suite", "metrics", "fingerprint", "checkpoint"):
        if key not in rec:
            raise ValueError(f"evaluation result {path} lacks the key {key!r}")
    return rec


def why_not_done(run_dir: str | Path, suite: str, fingerprint: dict[str, Any],
                 checkpoint_info: dict[str, Any] | None = None, keys: Sequence[str] | None = None) -> str | None:
    """None when a matching result exists, else the reason it must be (re)computed.

    ``keys``: compare only these fingerprint fields (e.g. the settings known before a suite runs);
    None compares every non-informational field of either side.
    """
    try:
        rec = read_result(run_dir, suite)
    except ValueError as e:  # torn by a crash or edited by hand: not done, recomputed (atomically replaced)
        log.warning("%s; treating %s as not done and recomputing it", e, suite)
        return f"the stored result is unreadable ({e})"
    if rec is None:
        return f"no result at {result_path(run_dir, suite)}"
    diff = mismatches(_plain(rec["fingerprint"]), _plain(fingerprint), keys=list(keys) if keys is not None else None)
    if diff:
        return "fingerprint differs: " + ", ".join(f"{k} (stored {a!r}, now {b!r})" for k, (a, b) in diff.items())
    if checkpoint_info is not None and checkpoint_info.get("sha256") != rec["checkpoint"].get("sha256"):
        return (f"checkpoint differs: stored sha256 {rec['checkpoint'].get('sha256')}, "
                f"now {checkpoint_info.get('sha256')}")
    return None


def is_done(run_dir: str | Path, suite: str, fingerprint: dict[str, Any],
            checkpoint_info: dict[str, Any] | None = None, keys: Sequence[str] | None = None) -> bool:
    """True iff ``suite`` has a stored result with the same protocol fingerprint (on ``keys``, if given)
    and, if given, the same checkpoint."""
    return why_not_done(run_dir, suite, fingerprint, checkpoint_info, keys) is None
