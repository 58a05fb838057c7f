"""Synthetic run stores in the harness's on-disk format, for tests, demos and report previews.

Nothing here trains anything: numbers are made up (deterministic given the seed) and every run
is marked ``extra.synthetic: true``. :func:`write_run` writes one run folder exactly as the
training and evaluation stages do; :func:`demo_store` writes a small store covering every
benchmark the reports know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from canbench.config import RunRecord
from canbench.data.identity import declared_identity, full_identity, identify
from canbench.evaluation.recipes import paper_recipe
from canbench.methods import METHODS
from canbench.rundir import RunDir

METHOD_DEFAULTS = {name: dict(cls.defaults) for name, cls in METHODS.items()}  # read from the method classes
SMOKE = dict(arch="vit_micro", dataset="builtin", epochs=1.0, max_steps=20, batch_size=64, img_size=32,
             patch_size=4)
PAPER = dict(arch="vit_base", dataset="imagenet", epochs=100.0, max_steps=None, batch_size=4096, img_size=224,
             patch_size=16)
CHECKPOINT_SHA = "0" * 64  # the run's (absent) checkpoint, as summary.json and every result name it
ENV = {"code_version": "synthetic", "torch": "2.4.0", "torchvision": "0.19.0", "timm": "1.0.9",
       "device_type": "cpu", "device_count": 1, "device_name": "cpu"}


def _write(path: Path, text: str) -> None:
    """Plain write (no fsync: synthetic stores are throw-away, and fsync makes big stores slow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _json(path: Path, obj: Any) -> None:
    _write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def eval_fingerprint(scale: dict[str, Any], suite: str = "linear") -> dict[str, Any]:
    """An evaluation fingerprint: the paper's protocol at PAPER scale, a cheap variant at SMOKE scale."""
    paper = scale["img_size"] == 224
    fp = {"pooling": "avg", "head_bn": None, "img_size": scale["img_size"],
          "dataset": "imagenet" if paper else "builtin", "epochs": 100 if paper else 5,
          "max_steps": None if paper else 50, "metric": "last_epoch", **ENV}
    if suite == "linear":
        fp.update(head_bn=True, metric="last_epoch (top1_best: best epoch)",
                  mode="augmented" if paper else "cached_features")
    elif suite == "finetune":
        fp.update(pooling="avg+fc_norm", head_bn=False, metric="last_epoch (top1_best: best epoch)")
    return fp


def write_run(root: str | os.PathLike, name: str, method: str, *, seed: int = 0, benchmark: str | None = None,
              scale: dict[str, Any] | None = None, method_cfg: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None, axes: dict[str, Any] | None = None,
              evals: dict[str, dict] | None = None,
              eval_fp: dict[str, Any] | None = None, final: dict[str, float] | None = None,
              flops: tuple[float, float] | None = None, img_per_s: float = 100.0, gpu_hours: float = 0.01,
              state: str = "done", curve_steps: int = 5) -> Path:
    """Write one run folder (config.yaml, status.json, metrics.jsonl, summary.json, eval/<suite>.json).

    ``config.extra`` mimics the grid launcher: benchmark, grid, scale, run_name, run_id, axes.
    """
    scale = {**SMOKE, **(scale or {})}
    run = RunDir(Path(root) / name)
    mcfg = {"name": method, **METHOD_DEFAULTS[method], "temperature": 0.1, "norm_pix_loss": False,
            **(method_cfg or {})}
    paper = scale["img_size"] == 224
    ex = {"preset": "paper" if paper else "smoke", "scale": "paper" if paper else "smoke", "synthetic": True,
          "run_name": name, "run_id": f"synthetic-{name}", "axes": {"method": method, **(axes or {})}}
    if benchmark:
        ex.update(benchmark=benchmark, grid=f"synthetic_{benchmark}")
    ex.update(extra or {})
    ex = RunRecord.from_dict(ex).to_dict()  # a typed run record, as the grid launcher writes it
    cfg = {
        "model": {"arch": scale["arch"], "img_size": scale["img_size"], "patch_size": scale["patch_size"],
                  "class_token": False, "pool": "avg"},
        "method": mcfg,
        "data": {"dataset": scale["dataset"], "augment": "simclr"},
        "optim": {"batch_size": scale["batch_size"], "epochs": scale["epochs"], "base_lr": 1.5e-4,
                  "epoch_unit": "dataset", "max_steps": scale["max_steps"]},
        "train": {"seed": seed},
        "extra": ex,
    }
    _write(run.config_path, yaml.safe_dump(cfg, sort_keys=False))
    steps = scale["max_steps"] or 1000
    _json(run.status_path, {"state": state, "reason": None, "step": steps, "job_ids": ["1"]})
    final = final or {"loss": 1.0}
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(curve_steps):
        frac = (i + 1) / curve_steps
        line = {"step": int(frac * steps), "epoch": frac * scale["epochs"], "lr": 1e-4, "img_per_s": img_per_s,
                "time": float(i)}
        for k, v in final.items():
            line[k] = float(v * (1 + 2 * (1 - frac)) * (1 + 0.01 * rng.standard_normal()))
        lines.append(json.dumps(line) + "\n")
    _write(run.metrics_path, "".join(lines))
    if state == "done":
        fwd, train = flops or (1e9, 3e9)
        _json(run.summary_path, {
            "run_id": ex["run_id"], "method": method, "arch": scale["arch"], "steps": steps, "final": final,
            "flops_per_image": {"forward": fwd, "train": train}, "img_per_s": img_per_s, "gpu_hours": gpu_hours,
            "device_hours": gpu_hours, "peak_mem_bytes": 2**30, "fingerprint": {"precision": "fp32", **ENV},
            "checkpoint_sha256": CHECKPOINT_SHA, "data_identity": identify(
                scale["dataset"], None, "train", builtin_version=None, size=None)})
    for suite, metrics in (evals or {}).items():
        _json(run.result_path(suite), {
            "suite": suite, "metrics": metrics, "fingerprint": eval_fp or eval_fingerprint(scale, suite),
            "checkpoint": {"path": str(run.last_checkpoint), "sha256": CHECKPOINT_SHA, "step": steps},
            "created": "2024-01-01T00:00:00"})
    return run.path


def write_paper_run(root: str | os.PathLike, grid: str, name: str, *, seed: int = 0,
                    evals: dict[str, dict] | None = None, final: dict[str, float] | None = None,
                    set_: list[str] | None = None, folder: str | None = None) -> Path:
    """A run of paper grid ``grid`` at ``--scale paper`` (its real resolved config; ``set_``: ``--set`` items) with
    made-up results recorded exactly as a run on complete ImageNet-1k (or declared JFT-300M) writes them: the
    paper's evaluation recipe, complete IN-1K train/val identities. ``name``: the grid run name without its seed
    (``can-noisefull``)."""
    from canbench.reports.reference import eval_data_identity
    from canbench.slurm.grid import expand
    from canbench.slurm.spec import GRID_DIR, load_spec

    spec = load_spec(GRID_DIR / "paper" / f"{grid}.yaml")
    runs = {r.name.rsplit("-s", 1)[0]: r for r in expand(spec, "paper", set_, check_paths=False,
                                                          world_size=spec.resources("paper").world_size)}
    if name not in runs:
        raise KeyError(f"grid {grid} has no run {name!r} at paper scale (runs: {', '.join(runs)})")
    cfg = runs[name].cfg.to_dict()
    cfg["train"]["seed"] = seed
    cfg["extra"].update(run_name=f"{name}-s{seed}", run_id=f"synthetic-{name}-s{seed}", synthetic=True)
    run = RunDir(Path(root) / (folder or f"{name}-s{seed}"))
    _write(run.config_path, yaml.safe_dump(cfg, sort_keys=False))
    _json(run.status_path, {"state": "done", "reason": None, "step": 1000, "job_ids": ["1"]})
    ident = (declared_identity("jft", "train") if cfg["data"]["dataset"] == "jft"
             else full_identity("imagenet-1k", "train"))
    _json(run.summary_path, {"run_id": cfg["extra"]["run_id"], "method": cfg["method"]["name"],
                             "arch": cfg["model"]["arch"], "steps": 1000, "final": final or {"loss": 1.0},
                             "fingerprint": dict(ENV), "checkpoint_sha256": CHECKPOINT_SHA, "data_identity": ident})
    for suite, metrics in (evals or {}).items():
        fp = {"eval_config": paper_recipe(suite), "eval_data": eval_data_identity(), "dataset": "imagenet", **ENV}
        _json(run.result_path(suite), {
            "suite": suite, "metrics": metrics, "fingerprint": fp,
            "checkpoint": {"path": str(run.last_checkpoint), "sha256": CHECKPOINT_SHA, "step": 1000},
            "created": "2024-01-01T00:00:00"})
    return run.path


FEWSHOT_SETS = ("cifar10", "dtd", "flowers102")
SHIFT_SETS = ("builtin_clean", "builtin_noise_blur", "builtin_rotate")


def demo_store(root: str | os.PathLike, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A synthetic smoke-scale store covering tables 1, 4, 5, figs 6, 7 and a 'smoke' benchmark."""
    root = Path(root)
    base = {"can": 40.0, "simclr": 38.0, "mae": 30.0}
    flops = {"can": (1.0e9, 3.0e9), "simclr": (1.7e9, 5.1e9), "mae": (0.4e9, 1.2e9)}
    for s in seeds:
        rng = np.random.default_rng(100 + s)

        def acc(mu: float, rng: np.random.Generator = rng) -> float:
            return round(float(mu + 0.3 * rng.standard_normal()), 3)

        for m in ("can", "simclr", "mae"):
            final = {"can": {"loss": 0.9, "infonce": 4.1, "rec": 0.16, "denoise": 0.01},
                     "simclr": {"loss": 4.2, "infonce": 4.2}, "mae": {"loss": 0.17, "rec": 0.17}}[m]
            evals = {"linear": {"top1": acc(base[m]), "top1_best": acc(base[m] + 0.5)},
                     "knn": {"top1": acc(base[m] - 3)},
                     "fewshot": {"results": [{"dataset": d, "shots": k, "mean": acc(base[m] - 20 + 2 * k ** 0.5 + i),
                                              "std": 0.5, "seeds": [0, 1, 2]}
                                             for i, d in enumerate(FEWSHOT_SETS) for k in (1, 5, 10, 25)]},
                     "shift": {"results": [{"set": d, "top1": acc(base[m] - 8 * i)} for i, d in enumerate(SHIFT_SETS)]}}
            write_run(root / "smoke", f"{m}_s{s}", m, seed=s, benchmark="smoke", evals=evals, final=final,
                      flops=flops[m], img_per_s={"can": 145, "simclr": 110, "mae": 430}[m],
                      gpu_hours=0.01 * flops[m][1] / 3e9)
            t4_cfg = {"mask_ratio": 0.5}
            t4_final = {"can": {"loss": 0.4, "infonce": 4.05, "rec": 0.158, "denoise": 0.01},
                        "simclr": {"loss": 4.1, "infonce": 4.1}, "mae": {"loss": 0.161, "rec": 0.161}}[m]
            write_run(root / "table4", f"{m}_s{s}", m, seed=s, benchmark="table4", method_cfg=t4_cfg,
                      final={k: v * (1 + 0.002 * rng.standard_normal()) for k, v in t4_final.items()})
        for mode, mu in (("none", 39.0), ("augment_only", 39.5), ("loss_without_sigma_embedding", 39.3),
                         ("full", 40.0)):
            write_run(root / "table1", f"{mode}_s{s}", "can", seed=s, benchmark="table1",
                      axes={"method.noise_mode": mode},
                      method_cfg={"noise_mode": mode, "sigma_max": 0.0 if mode == "none" else 0.05},
                      evals={"linear": {"top1": acc(mu)}})
        for label, mc, mu in (("AN", {"l_nce": 0.0}, 25.0), ("CN", {"lam": 0.0}, 39.2),
                              ("CA", {"noise_mode": "none", "sigma_max": 0.0}, 39.0), ("CAN", {}, 40.0)):
            write_run(root / "table5", f"{label}_s{s}", "can", seed=s, benchmark="table5", method_cfg=mc,
                      axes={"variant": label},
                      evals={"linear": {"top1": acc(mu)}})
        for m, curve in (("can", {0.0: 38.0, 0.25: 40.5, 0.5: 40.0, 0.75: 37.0}),
                         ("simclr", {0.0: 38.0, 0.25: 36.0, 0.5: 33.0, 0.75: 28.0})):
            for r, mu in curve.items():
                write_run(root / "fig6", f"{m}_m{r:g}_s{s}", m, seed=s, benchmark="fig6",
                          method_cfg={"mask_ratio": r}, axes={"method.mask_ratio": r},
                          evals={"linear": {"top1": acc(mu)}})
        for axis, pts in (("l_nce", {0.0: 25.0, 0.01: 39.0, 0.03: 40.0, 0.1: 39.5, 0.3: 38.0}),
                          ("sigma_max", {0.0: 39.0, 0.025: 39.6, 0.05: 40.0, 0.1: 39.7, 0.2: 39.2}),
                          ("lam", {0.3: 39.8, 0.5: 39.9, 0.7: 40.0, 0.9: 39.9})):
            for v, mu in pts.items():
                if axis != "l_nce" and v == METHOD_DEFAULTS["can"][axis]:
                    continue  # the default point is run once, in the l_nce sweep
                mc = {axis: v}
                if axis == "sigma_max" and v == 0.0:
                    mc["noise_mode"] = "none"
                write_run(root / "fig7", f"{axis}{v:g}_s{s}", "can", seed=s, benchmark="fig7", method_cfg=mc,
                          axes={f"method.{k}": mc.get(k, METHOD_DEFAULTS["can"][k])
                                for k in ("l_nce", "sigma_max", "lam")},
                          evals={"linear": {"top1": acc(mu)}})
    return root
