"""The suite registry: how each evaluation suite plans its data and protocol before anything runs.

A planner takes the :class:`~canbench.evaluation.context.Context` and returns a :class:`SuitePlan`: the
fields known beforehand (data set, data splits, protocol settings, profile, encoder: what decides whether
a stored result is still valid), the function that computes the result, and the checkpoint it belongs
to. Every data root is checked while planning. :data:`SUITES` maps each suite name to its planner in the
order ``all`` runs them; the runner (:mod:`.runner`) plans all requested suites, then runs or skips each.
A plan may name suites it needs first (``shift`` evaluates the classifier the ``finetune`` suite writes).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canbench.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError
from canbench.config import SUITES as SUITE_ORDER
from canbench.evaluation import recipes as RC
from canbench.evaluation import results as R
from canbench.evaluation.context import Context
from canbench.evaluation.source import finetuned_meta
from canbench.evaluation.splits import BUILTIN_FEWSHOT_SETS, DataSpec, fewshot_specs, main_specs, num_classes
from canbench.io import write_json

log = logging.getLogger(__name__)

BUILTIN_SHIFT_SETS = ("builtin", "builtin_noise_blur", "builtin_rendition", "builtin_new_background",
                      "builtin_occlusion")
PLAN_KEYS = ("dataset", "eval_data", "eval_config", "eval_profile", "encoder")  # what a stored result must match


@dataclass
class SuitePlan:
    """A suite ready to run: the fields known beforehand (skip check) and the function that computes it."""

    suite: str
    plan_fields: dict[str, Any]
    run: Callable[[], dict[str, Any]]
    checkpoint: Callable[[], dict[str, Any]]
    extra_done: Callable[[], str | None] = field(default=lambda: None)  # another reason to rerun, or None
    needs: tuple[str, ...] = ()  # suites whose results this one reads: brought up to date first


def plain(obj: Any) -> Any:
    """A JSON round trip (tuples become lists), so planned and stored fields compare equal."""
    return json.loads(json.dumps(obj, default=str))


def _recipe(ctx: Context, section: str, settings: dict[str, Any]) -> dict[str, Any]:
    return RC.suite_recipe(section, settings, ctx.settings)


def _plan_fields(ctx: Context, dataset: Any, data: Any, config: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": dataset, "eval_data": data, "eval_config": config, "eval_profile": ctx.profile,
            "encoder": ctx.encoder_desc}


def _trained_suite_setup(ctx: Context, section: str) -> tuple[Any, dict[str, Any], DataSpec, DataSpec]:
    """The linear probe's / finetune's config and recipe (:func:`canbench.evaluation.recipes.trained_protocol`)
    and the train / eval splits; checked before any work."""
    cfg, conf = RC.trained_protocol(section, ctx.settings, ctx.scale, ctx.img_size, ctx.crop(None), ctx.user_keys)
    train, val = main_specs(ctx.family, ctx.dataset, ctx.settings.data, ctx.pretrain_builtin_size())
    if train.generated and train.size is not None and cfg.batch_size > train.size:
        raise ConfigError(f"{section}.batch_size={cfg.batch_size} exceeds the {train.size} training images "
                          f"({train.name} train); set {section}.batch_size or data.train_size")
    return cfg, conf, train, val


def plan_linear(ctx: Context) -> SuitePlan:
    from canbench.evaluation.linear import run_linear

    cfg, conf, train, val = _trained_suite_setup(ctx, "linear")

    def run() -> dict[str, Any]:
        tr, va = train.build(ctx.img_size), val.build(ctx.img_size)
        splits = (("val", val, va), ("train", train, tr)) if cfg.mode == "cached_features" else (("val", val, va),)
        feats = {k: ctx.features(spec, ds, cfg.crop_pct, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.num_workers)
                 for k, spec, ds in splits}
        out = run_linear(ctx.encoder(), tr, va, cfg, ctx.device, num_classes=num_classes(tr), dataset=train.display,
                         features=feats)
        out["metrics"] = {**out["metrics"], "history": out.get("history", [])}
        return out

    data = {"train": train.describe(), "test": val.describe()}
    return SuitePlan("linear", _plan_fields(ctx, train.display, data, conf), run, ctx.source.checkpoint_info)


def plan_knn(ctx: Context) -> SuitePlan:
    from canbench.evaluation.knn import run_knn

    s = RC.section_dict(ctx.settings.knn)
    s["crop_pct"] = ctx.crop(s["crop_pct"])
    train, val = main_specs(ctx.family, ctx.dataset, ctx.settings.data, ctx.pretrain_builtin_size())
    conf = {**_recipe(ctx, "knn", s), "img_size": ctx.img_size}

    def run() -> dict[str, Any]:
        tr, va = train.build(ctx.img_size), val.build(ctx.img_size)
        feats = {split: ctx.features(spec, ds, s["crop_pct"], IMAGENET_MEAN, IMAGENET_STD, s["batch_size"],
                                     s["num_workers"])
                 for split, spec, ds in (("train", train, tr), ("val", val, va))}
        return run_knn(ctx.encoder(), tr, va, img_size=ctx.img_size, device=ctx.device, k=s["k"],
                       temperature=s["temperature"], batch_size=s["batch_size"], num_workers=s["num_workers"],
                       crop_pct=s["crop_pct"], num_classes=num_classes(tr), dataset=train.display, features=feats)

    data = {"train": train.describe(), "test": val.describe()}
    return SuitePlan("knn", _plan_fields(ctx, train.display, data, conf), run, ctx.source.checkpoint_info)


def _merge_fields(per_set: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One fingerprint for several data sets: a field that differs becomes ``{set: value}``."""
    keys = sorted({k for f in per_set.values() for k in f})
    out: dict[str, Any] = {}
    for k in keys:
        vals = {n: per_set[n].get(k) for n in per_set}
        first = next(iter(vals.values()))
        out[k] = first if all(v == first for v in vals.values()) else vals
    out["dataset"] = list(names)
    return out


def plan_fewshot(ctx: Context) -> SuitePlan:
    from canbench.evaluation.fewshot import run_fewshot

    s = ctx.settings.fewshot
    names = s.datasets
    if names is None:
        if ctx.family != "builtin":
            raise ConfigError("fewshot: no data sets given; set fewshot.datasets=[cifar10,dtd,...] and "
                              "fewshot.root=/datasets (or fewshot.roots.<name>=/path per set)")
        names = list(BUILTIN_FEWSHOT_SETS)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"fewshot.datasets must be a non-empty list of names, got {names!r}")
    shots, seeds = list(s.shots), list(s.seeds)
    linear_cfg = None
    if s.head == "linear":
        from canbench.config import apply

        linear_cfg = RC.LinearHeadConfig()
        apply(linear_cfg, s.linear_head, prefix="fewshot.linear_head.")
    specs = {n: fewshot_specs(n, s, ctx.settings.data.test_size) for n in names}
    crops = {n: ctx.crop(s.crop_pct, generated=specs[n][0].generated) for n in names}
    conf = {**_recipe(ctx, "fewshot", RC.section_dict(s)),
            "crop_pct": crops if len(set(crops.values())) > 1 else next(iter(crops.values())), "img_size": ctx.img_size}
    data = {n: {"train": tr.describe(), "test": te.describe()} for n, (tr, te) in specs.items()}

    def run() -> dict[str, Any]:
        results, fields, details, errors = [], {}, {}, {}
        for n in names:  # one data set's failure never loses the others' results
            try:
                tr_spec, te_spec = specs[n]
                tr, te = tr_spec.build(ctx.img_size), te_spec.build(ctx.img_size)
                t0 = time.time()
                out = run_fewshot(ctx.encoder(), tr, te, img_size=ctx.img_size, device=ctx.device, shots=shots,
                                  seeds=seeds, head=s.head, num_classes=num_classes(tr), batch_size=s.batch_size,
                                  num_workers=s.num_workers, crop_pct=crops[n], linear_cfg=linear_cfg, dataset=n)
            except Exception as e:  # noqa: BLE001 - recorded with the result and raised by the runner
                log.exception("fewshot %s failed", n)
                errors[n] = f"{type(e).__name__}: {e}"
                continue
            m = out["metrics"]
            log.info("fewshot %s: %s (%.0fs)", n, {k: round(v, 2) for k, v in m.items() if k.endswith("mean")},
                     time.time() - t0)
            for k in shots:
                results.append({"dataset": n, "shots": k, "mean": m[f"{k}shot_mean"], "std": m[f"{k}shot_std"],
                                "seeds": list(seeds), "per_seed": [m[f"{k}shot_seed{sd}"] for sd in seeds],
                                "actual_shots": int(m[f"{k}shot_actual"])})
            fields[n] = out["fingerprint_fields"]
            details[n] = {"n_train": len(tr), "n_test": len(te), "num_classes": num_classes(tr)}
        ok = [n for n in names if n in fields]
        metrics: dict[str, Any] = {"results": results, "details": details}
        if errors:
            metrics["errors"] = errors
        merged = _merge_fields(fields, ok) if ok else {"shots": list(shots)}
        return {"metrics": metrics, "fingerprint_fields": {**merged, "dataset": list(names)}}

    def failed_before() -> str | None:
        try:
            stored = R.read_result(ctx.out.path, "fewshot") if ctx.out.result_path("fewshot").is_file() else None
        except ValueError:  # unreadable: why_not_done already says it is not done
            stored = None
        errors = (stored or {}).get("metrics", {}).get("errors")
        return f"the stored result failed on {', '.join(errors)}" if errors else None

    return SuitePlan("fewshot", _plan_fields(ctx, list(names), data, conf), run, ctx.source.checkpoint_info,
                     failed_before)


def plan_finetune(ctx: Context) -> SuitePlan:
    from canbench.evaluation.finetune import run_finetune

    if ctx.source.kind == "finetuned":
        raise ConfigError(f"{ctx.source.path} is a finetuned classifier: only the shift suite evaluates it")
    cfg, conf, train, val = _trained_suite_setup(ctx, "finetune")
    target = ctx.out.finetuned_path

    def run() -> dict[str, Any]:
        tr, va = train.build(ctx.img_size), val.build(ctx.img_size)
        out = run_finetune(ctx.encoder(), tr, va, cfg, num_classes(tr), ctx.device, out_path=target,
                           dataset=train.display)
        write_json(target.parent / "source.json", {"pretrained": ctx.source.checkpoint_info(),
                                                   "dataset": train.display, "eval_config": conf,
                                                   "metrics": dict(out["metrics"])})
        out["metrics"] = {**out["metrics"], "checkpoint": str(target), "history": out.get("history", [])}
        return out

    def stale() -> str | None:
        return None if target.is_file() else f"the finetuned checkpoint {target} is missing"

    data = {"train": train.describe(), "test": val.describe()}
    return SuitePlan("finetune", _plan_fields(ctx, train.display, data, conf), run, ctx.source.checkpoint_info, stale)


def _shift_checkpoint(ctx: Context) -> tuple[Path, tuple[str, ...]]:
    """The classifier the shift suite evaluates and the suites that must run first: the source itself (a
    finetuned classifier), ``shift.checkpoint``, or the run's own ``finetune/finetuned.pt`` (finetune first)."""
    if ctx.source.kind == "finetuned":
        return ctx.source.path, ()
    if ctx.settings.shift.checkpoint:
        path = Path(ctx.settings.shift.checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(f"shift.checkpoint={path} does not exist")
        return path, ()
    return ctx.out.finetuned_path, ("finetune",)


def plan_shift(ctx: Context) -> SuitePlan:
    from canbench.evaluation.shift import run_shift
    from canbench.evaluation.shift_data import NEEDS_ROOT, PAPER_SETS, SHIFT_SETS, ShiftDataError
    from canbench.evaluation.splits import check_dir, imagenet_specs

    checkpoint, needs = _shift_checkpoint(ctx)
    s = copy.deepcopy(ctx.settings.shift)
    sets = s.sets
    if sets is None:
        if ctx.family == "builtin":
            sets = list(BUILTIN_SHIFT_SETS)
        elif ctx.family == "imagenet":
            sets = list(PAPER_SETS)
        else:
            raise ConfigError("shift: no sets given; set shift.sets=[...] (registered: "
                              f"{', '.join(SHIFT_SETS)}, imagenet_c) and shift.roots.<set>=/path")
    known = set(SHIFT_SETS) | {"imagenet_c"}
    for name in sets:
        if name not in known:
            raise ConfigError(f"shift.sets: unknown set {name!r} (registered: {', '.join(sorted(known))})")
    roots = {k: str(v) for k, v in (s.roots or {}).items()}
    for k in roots:
        if k not in known:
            raise ConfigError(f"shift.roots.{k}: unknown set {k!r} (registered: {', '.join(sorted(known))})")
    if "imagenet" in sets and "imagenet" not in roots and ctx.family == "imagenet":
        _, val = imagenet_specs(ctx.dataset, ctx.settings.data.root, ctx.settings.data.val_root)
        roots["imagenet"] = str(Path(val.root) / "val") if (Path(val.root) / "val").is_dir() else val.root
    for name in sets:
        if name in NEEDS_ROOT or name == "imagenet_c":
            check_dir(f"shift set {name!r}", roots.get(name), f"shift.roots.{name}")
    options = dict(s.options or {})
    if any(n.startswith("builtin") for n in sets) and "builtin_size" not in options:
        size = s.test_size if s.test_size is not None else ctx.settings.data.test_size
        if size is not None:
            options["builtin_size"] = size
    used_roots = {n: roots[n] for n in sets if n in roots}
    conf = {**_recipe(ctx, "shift", RC.section_dict(s)), "options": {k: options[k] for k in sorted(options)}}

    def checkpoint_info() -> dict[str, Any]:
        return R.checkpoint_info(checkpoint, finetuned_meta(checkpoint).get("step") if checkpoint.is_file() else None)

    def run() -> dict[str, Any]:
        if not checkpoint.is_file():
            raise ConfigError(f"shift: finetuned checkpoint {checkpoint} does not exist (run the finetune suite "
                              "or set shift.checkpoint=/path/to/finetuned.pt)")
        from canbench.evaluation.classifier import CHECKPOINT_FORMAT

        meta = finetuned_meta(checkpoint)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"shift: {checkpoint} is not a finetuned canbench classifier")
        if any(n in NEEDS_ROOT or n == "imagenet_c" for n in sets) and int(meta.get("num_classes", 0)) != 1000:
            raise ConfigError(f"shift: the ImageNet shift sets need a 1000-class classifier; {checkpoint} has "
                              f"{meta.get('num_classes')} classes")
        try:
            out = run_shift(checkpoint, sets, used_roots, device=ctx.device, batch_size=s.batch_size,
                            num_workers=s.num_workers, set_options=options, dataset=list(sets))
        except ShiftDataError as e:
            raise ConfigError(str(e)) from None
        m = out["metrics"]
        res = [{"set": n, "top1": m[n]} for n in sets if n in m]
        if "imagenet_c_mce" in m:
            res.append({"set": "imagenet_c", "mCE": m["imagenet_c_mce"]})
        metrics: dict[str, Any] = {"results": res, "details": out["details"]}
        shifted = [r["top1"] for r in res if "top1" in r and r["set"] not in ("builtin", "imagenet")]
        if shifted:
            metrics["mean_shifted_top1"] = sum(shifted) / len(shifted)
        return {"metrics": metrics, "fingerprint_fields": out["fingerprint_fields"]}

    data = {"sets": list(sets), "options": {k: options[k] for k in sorted(options)}}
    fields = _plan_fields(ctx, list(sets), data, conf)
    # the model is the finetuned classifier, identified by its checkpoint's sha256 (whether it is named by a
    # run folder or by its finetune folder); the finetune result records the pretrained encoder
    fields["encoder"] = {"source": "canbench-finetuned"}
    return SuitePlan("shift", fields, run, checkpoint_info, needs=needs)


SUITES: dict[str, Callable[[Context], SuitePlan]] = {
    "knn": plan_knn, "linear": plan_linear, "fewshot": plan_fewshot, "finetune": plan_finetune, "shift": plan_shift,
}
assert tuple(SUITES) == SUITE_ORDER, "the registry follows canbench.config.SUITES"


__all__ = ["BUILTIN_SHIFT_SETS", "PLAN_KEYS", "SUITES", "SuitePlan", "plain", "plan_fewshot", "plan_finetune",
           "plan_knn", "plan_linear", "plan_shift"]
