"""The built-in data set as a benchmark: does pretraining beat a random encoder of the same shape?

For CAN, SimCLR and MAE pretrained with the probe preset (``canbench pretrain <m> --preset probe``: the smoke
model, 256 steps, CAN's l_nce 0.3; ``--preset smoke`` for the 48-step demo recipe; runs
are reused from ``--runs-dir`` when their checkpoint exists, else pretrained there) and a randomly
initialised encoder (the same ViT, the engine's initialisation, step 0), this runs the evaluation suites
through :func:`canbench.evaluation.runner.run_suites` and reports:

- linear probe top-1 (smoke profile: cached features, BN + linear head, LARS) and kNN top-1
  (k = 20, T = 0.07) on built-in train -> test;
- few-shot top-1 on ``builtin_heldout`` (6 shapes never seen in pretraining), 5 and 10 shots, mean over 3 seeds;
- finetune top-1 (smoke protocol: 5 epochs) and distribution-shift top-1 of that finetuned model on the
  built-in variants noise_blur, rendition, new_background, occlusion (and their mean).

Results are stored in each run folder's ``eval/`` (so a second invocation only reads them back), printed as
a Markdown table (``--json`` for JSON). Example::

    python benchmarks/perf/bench_eval_builtin.py --runs-dir runs/bench-probe
    python benchmarks/perf/bench_eval_builtin.py --runs-dir runs/bench-smoke --preset smoke
    python benchmarks/perf/bench_eval_builtin.py --runs-dir runs/bench-e16 --pretrain-set optim.epochs=16
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from canbench.config import SUITES
from canbench.flags import add_device_flag, add_preset_flag
from canbench.methods import METHODS
from canbench.rundir import RunDir
from canbench.train.recipe import build_config

SHIFTED = ("builtin_noise_blur", "builtin_rendition", "builtin_new_background", "builtin_occlusion")
EVAL_OVERRIDES = ["fewshot.datasets=[builtin_heldout]", "fewshot.shots=[5,10]"]
log = logging.getLogger("bench_eval_builtin")


COMPARED = ("model", "method", "data", "optim")  # config sections a reused run must match


def config_diff(run: Path, method: str, preset: str, overrides: list[str]) -> dict[str, tuple[Any, Any]]:
    """Keys of the model / method / data / optim sections where the run's config.yaml differs from the request."""
    want = build_config(method, preset, overrides).to_dict()
    have = RunDir(run).read_config() or {}
    diff = {}
    for sec in COMPARED:
        for k in set(want[sec]) | set(have.get(sec, {})):
            a, b = have.get(sec, {}).get(k), want[sec].get(k)
            if a != b and not (isinstance(a, list) and tuple(a) == tuple(b or ())):
                diff[f"{sec}.{k}"] = (a, b)
    return diff


def pretrained_run(runs_dir: Path, method: str, preset: str, overrides: list[str],
                   reuse_any: bool = False) -> tuple[Path, float | None]:
    """``<runs_dir>/<method>``: reused when it holds a finished checkpoint of the same config, else pretrained."""
    from canbench.train.trainer import pretrain

    run = runs_dir / method
    if RunDir(run).has_checkpoint() and RunDir(run).summary_path.is_file():
        diff = config_diff(run, method, preset, overrides)
        if diff and not reuse_any:
            raise SystemExit(f"{run} was pretrained with other settings than --preset {preset} "
                             f"{' '.join(overrides)}: " + ", ".join(f"{k}: run {a!r}, asked {b!r}"
                                                                  for k, (a, b) in sorted(diff.items()))
                             + " (pass the same --pretrain-set values, another --runs-dir, or --reuse-any)")
        log.info("%s: reusing %s", method, run)
        return run, None
    t0 = time.time()
    log.info("%s: pretraining (preset %s %s) into %s", method, preset, " ".join(overrides), run)
    pretrain(build_config(method, preset, overrides), run)
    return run, time.time() - t0


def random_run(runs_dir: Path, preset: str, overrides: list[str], method: str = "can", name: str = "random",
               record: dict[str, Any] | None = None) -> Path:
    """A run folder ``<runs_dir>/<name>`` whose checkpoint holds a freshly initialised encoder (step 0) of the
    preset's shape; its config says ``extra.random_init: true`` (reports show it as the random-init reference)
    plus the run-record fields in ``record`` (e.g. benchmark, scale, run_name)."""
    from canbench.io import torch_save_atomic
    from canbench.methods.backbone import build_encoder
    from canbench.train.checkpoint import ENCODER_PREFIX

    run = RunDir(runs_dir / name)
    if run.has_checkpoint():
        return run.path
    cfg = build_config(method, preset, overrides)
    torch.manual_seed(cfg.train.seed)  # the engine seeds the same way before building the model
    enc = build_encoder(cfg.model)
    cfg.extra.random_init = True
    for k, v in (record or {}).items():
        setattr(cfg.extra, k, v)
    state = {"format_version": 1, "config": cfg.to_dict(), "step": 0,
             "model": {f"{ENCODER_PREFIX}{k}": v for k, v in enc.state_dict().items()}}
    torch_save_atomic(state, run.last_checkpoint)
    run.write_config(cfg.to_dict())
    return run.path


def summarise(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The table's numbers from ``run_suites`` records."""
    fs = {(r["dataset"], r["shots"]): r for r in res["fewshot"]["metrics"]["results"]}
    shift = {r["set"]: r.get("top1") for r in res["shift"]["metrics"]["results"]}
    row = {"linear": res["linear"]["metrics"]["top1"], "knn": res["knn"]["metrics"]["top1"],
           "fewshot5": fs[("builtin_heldout", 5)]["mean"], "fewshot5_std": fs[("builtin_heldout", 5)]["std"],
           "fewshot10": fs[("builtin_heldout", 10)]["mean"], "fewshot10_std": fs[("builtin_heldout", 10)]["std"],
           "finetune": res["finetune"]["metrics"]["top1"], "shift_clean": shift.get("builtin")}
    for s in SHIFTED:
        row[s] = shift.get(s)
    row["shift_mean"] = sum(row[s] for s in SHIFTED) / len(SHIFTED)
    return row


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    head = ["encoder", "steps", "linear", "kNN", "heldout 5-shot", "heldout 10-shot", "finetune", "noise_blur",
            "rendition", "new_bg", "occlusion", "shift mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows.get("random")

    def cell(name: str, r: dict[str, Any], key: str, std: str | None = None) -> str:
        v = r[key]
        txt = f"{v:.1f}" + (f" ± {r[std]:.1f}" if std else "")
        if base is not None and name != "random" and key in ("linear", "knn", "fewshot5", "fewshot10", "finetune",
                                                             "shift_mean"):
            txt += f" ({v - base[key]:+.1f})"
        return txt

    for name, r in rows.items():
        cells = [cell(name, r, "linear"), cell(name, r, "knn"), cell(name, r, "fewshot5", "fewshot5_std"),
                 cell(name, r, "fewshot10", "fewshot10_std"), cell(name, r, "finetune"),
                 *(cell(name, r, s) for s in SHIFTED), cell(name, r, "shift_mean")]
        lines.append("| " + " | ".join([name, str(r.get("steps")), *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/bench-eval-builtin", help="folder of the run folders")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    add_preset_flag(p, "probe", help="pretraining preset (default probe: 256 steps, see its YAML)")
    p.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                   help="pretraining override (repeatable), e.g. optim.epochs=16")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluation setting (repeatable), e.g. linear.epochs=50")
    p.add_argument("--no-random", action="store_true", help="skip the random-init baseline")
    p.add_argument("--reuse-any", action="store_true", help="reuse run folders even if pretrained with other settings")
    p.add_argument("--force", action="store_true", help="recompute stored evaluation results")
    add_device_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from canbench.benchmarks.perf.hardware import describe_hardware, hardware_line
    from canbench.evaluation.runner import run_suites

    runs_dir = Path(args.runs_dir)
    encoders: dict[str, Path] = {}
    pretrain_s: dict[str, float | None] = {}
    for m in args.methods:
        encoders[m], pretrain_s[m] = pretrained_run(runs_dir, m, args.preset, args.pretrain_set, args.reuse_any)
    if not args.no_random:
        encoders["random"] = random_run(runs_dir, args.preset, args.pretrain_set)
    rows, timings = {}, {}
    for name, run in encoders.items():
        t0 = time.time()
        res = run_suites(run, list(SUITES), overrides=EVAL_OVERRIDES + args.eval_set, force=args.force,
                         device=args.device)
        timings[name] = {"eval_s": round(time.time() - t0, 1),
                         "suite_s": {s: r["metrics"].get("elapsed_s") for s, r in res.items()}}
        rows[name] = summarise(res)
        rows[name]["steps"] = res["knn"]["checkpoint"]["step"]
        log.info("%s: %s", name, {k: round(v, 2) for k, v in rows[name].items() if isinstance(v, float)})
    if "random" in rows:  # the random baseline last, deltas against it
        rows = {**{k: v for k, v in rows.items() if k != "random"}, "random": rows["random"]}
    hw = describe_hardware(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    command = "python benchmarks/perf/bench_eval_builtin.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        json.dump({"rows": rows, "hardware": hw, "command": command, "pretrain_s": pretrain_s,
                   "timings": timings, "preset": args.preset, "pretrain_overrides": args.pretrain_set,
                   "eval_overrides": EVAL_OVERRIDES + args.eval_set}, sys.stdout, indent=2, default=str)
        print()
    else:
        print(markdown(rows))
        print()
        print(f"Top-1 %, built-in test split (2000 images; heldout: 6 unseen shapes, mean ± std over 3 seeds); "
              f"(+x) = points over the random-init encoder. Preset {args.preset} "
              f"{' '.join(args.pretrain_set)}; eval settings {' '.join(EVAL_OVERRIDES + args.eval_set)}.")
        print(f"Hardware: {hardware_line(hw)}. Command: `{command}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
