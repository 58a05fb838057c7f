"""Run evaluation suites on a checkpoint and store their results: the one entry point after pretraining.

``canbench evaluate`` and :func:`run_suites` (the grid launcher, ``make demo``) both go through
:func:`evaluate`:

1. **Source** — what is evaluated (:func:`canbench.evaluation.source.resolve_source`).
2. **Context** — profile, layered settings, data set, encoder description
   (:func:`canbench.evaluation.context.build_context`).
3. **Plan** — every requested suite plans its data and protocol, checking every data root, *before any
   work* (:data:`canbench.evaluation.suites.SUITES`); suites a plan needs (shift needs finetune) are added
   in front when their stored result is missing or stale.
4. **Run or skip** — each suite writes ``<out>/eval/<suite>.json`` atomically
   (:func:`canbench.evaluation.results.write_result`) with its fingerprint and the checkpoint's sha256 and
   step. A suite whose stored result has the same planned fields (:data:`~.suites.PLAN_KEYS`) and checkpoint
   is skipped unless ``force``. Each new result's numbers also go to the run's TensorBoard (and Weights &
   Biases when its config says ``train.wandb: true``) as ``eval/<suite>/<metric>`` at the checkpoint's step
   (:func:`canbench.train.logger.open_sinks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from canbench.config import SUITES as SUITE_ORDER
from canbench.config import ConfigError
from canbench.evaluation import results as R
from canbench.evaluation.context import Context, build_context
from canbench.evaluation.source import Source, resolve_source
from canbench.evaluation.suites import PLAN_KEYS, SUITES, SuitePlan, plain
from canbench.rundir import RunDir
from canbench.runtime import rank_world
from canbench.train.logger import check_sinks, open_sinks

log = logging.getLogger(__name__)


class SuiteError(RuntimeError):
    """A suite ran but part of it failed (e.g. one few-shot data set); its other results were written."""


def expand_suites(suites: Sequence[str]) -> list[str]:
    """``all`` -> every suite; order kept, duplicates dropped; unknown names are errors."""
    out: list[str] = []
    for s in suites:
        for n in (SUITE_ORDER if s == "all" else (s,)):
            if n not in SUITES:
                raise ConfigError(f"unknown evaluation suite {n!r} (one of {', '.join(SUITE_ORDER)}, all)")
            if n not in out:
                out.append(n)
    return out


def why_rerun(ctx: Context, plan: SuitePlan) -> str | None:
    """None when ``ctx.out`` holds a result of ``plan`` made with the same planned fields and checkpoint."""
    fp = R.make_fingerprint(plain(plan.plan_fields))
    reason = R.why_not_done(ctx.out.path, plan.suite, fp, plan.checkpoint(), keys=PLAN_KEYS)
    return reason or plan.extra_done()


def evaluate(source: Source, suites: Sequence[str], out: str | Path | None = None, *, scale: str | None = None,
             preset: str | None = None, overrides: list[str] | dict[str, Any] | None = None, force: bool = False,
             device: str | torch.device | None = None) -> dict[str, dict[str, Any]]:
    """Plan every suite (all settings and data roots checked first), then run or skip each in order.

    Returns ``{suite: record}``: the stored result (``suite``, ``metrics``, ``fingerprint``,
    ``checkpoint``, ``created``) plus ``path`` and ``skipped`` (True when an up-to-date result existed).
    """
    if out is None:
        out = source.run_dir
        if out is None:
            raise ConfigError(f"{source.path}: not inside a run folder; pass --out DIR for the results")
    out = Path(out)
    if out.name == RunDir.EVAL:  # --out runs/x/eval names the eval folder itself
        out = out.parent
    names = expand_suites(suites)
    names = [n for n in SUITE_ORDER if n in names]  # the registry's order
    if source.kind == "finetuned":
        bad = [n for n in names if n != "shift"]
        if bad and list(suites) != ["all"]:
            raise ConfigError(f"{source.path} is a finetuned classifier: only the shift suite evaluates it "
                              f"(asked for {', '.join(bad)})")
        names = ["shift"]
    ctx = build_context(source, out, scale=scale, preset=preset, overrides=overrides, device=device)
    plans = {n: SUITES[n](ctx) for n in names}  # plan everything before running anything
    for n in list(names):
        for need in plans[n].needs:
            if need in names:
                continue
            plan = SUITES[need](ctx)
            if force or why_rerun(ctx, plan) is not None:
                log.info("%s needs the %s suite's result first: running it", n, need)
                names.insert(names.index(n), need)
                plans[need] = plan

    check_sinks(RunDir(out).read_config())  # train.wandb without the package fails before any suite runs
    done: dict[str, dict[str, Any]] = {}
    sinks = None  # opened at the first suite that runs (a call whose suites are all up to date writes nothing)
    try:
        for n in names:
            plan = plans[n]
            reason = "forced (--force)" if force else why_rerun(ctx, plan)
            path = ctx.out.result_path(n)
            if reason is None:
                log.info("%s: up to date (%s), skipped", n, path)
                done[n] = {**R.read_result(out, n), "path": str(path), "skipped": True}
                continue
            log.info("%s: running (%s)", n, reason)
            t0 = time.time()
            res = plan.run()
            fields = dict(res["fingerprint_fields"])
            for k, v in plan.plan_fields.items():
                if k == "dataset" and fields.get("dataset") not in (None, v):
                    raise RuntimeError(f"{n}: suite reported dataset {fields['dataset']!r}, planned {v!r}")
                fields[k] = v
            fp = R.make_fingerprint(fields)
            metrics = {**res["metrics"], "elapsed_s": round(time.time() - t0, 1)}
            ckpt = plan.checkpoint()
            R.write_result(out, n, metrics, fp, ckpt)
            if metrics.get("errors"):  # written first: the other data sets' results are kept
                raise SuiteError(f"{n} failed on {', '.join(metrics['errors'])} ("
                                 + "; ".join(f"{k}: {v}" for k, v in metrics["errors"].items())
                                 + f"); the other data sets' results are in {path}, and the next evaluate reruns it")
            log.info("%s: done in %.0fs -> %s", n, time.time() - t0, path)
            if sinks is None and rank_world()[0] == 0:
                sinks = open_sinks(RunDir(out))
            if sinks is not None:
                sinks.log(metrics, int(ckpt.get("step") or 0), prefix=f"eval/{n}")
            done[n] = {**R.read_result(out, n), "path": str(path), "skipped": False}
    finally:
        if sinks is not None:
            sinks.close()
    return done


def run_suites(run_dir: str | Path, suites: list[str], *, scale: str | None = None,
               overrides: list[str] | dict[str, Any] | None = None, force: bool = False,
               device: str | torch.device | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate a pretraining run folder: each suite -> ``<run_dir>/eval/<suite>.json``.

    ``scale``: evaluation profile (smoke | small | paper | mae); default from the run
    (:func:`canbench.train.recipe.scale_of`). ``overrides``: ``["linear.epochs=90", ...]`` or a nested dict;
    the run config's ``extra.eval`` mapping is applied before them. Finished suites (same settings and
    checkpoint) are skipped unless ``force``.
    """
    source = resolve_source(run_dir)
    if source.kind != "run":
        raise ConfigError(f"run_suites needs a run folder with {RunDir.CHECKPOINTS}/{RunDir.LAST}, got {run_dir}")
    return evaluate(source, suites, Path(run_dir), scale=scale, overrides=overrides, force=force, device=device)


__all__ = ["SuiteError", "evaluate", "expand_suites", "run_suites", "why_rerun"]
