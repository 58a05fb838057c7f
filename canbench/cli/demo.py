"""``canbench demo`` (= ``make demo``): the whole pipeline on the built-in data set, on this CPU.

1. the smoke grid (CAN, SimCLR, MAE x 2 seeds) and the ablations that make sense at this scale,
   each through the local executor (the same code path as SLURM), with their evaluation suites;
2. the PDF report (``reports/out/demo.pdf``) with tables, figures and the claims scorecard;
3. ``canbench check`` against the committed baseline (``reports/baselines/smoke.csv``); the demo's exit code
   fails on what the check fails on except *inconclusive* cells (:func:`demo_exit_code`).

Finished runs are reused, so running it again only redoes what is missing. The grids share one run store
(``--root``): a run config that several grids name (CAN at the smoke defaults is in all three) trains once and
each grid evaluates it with its own suites (:mod:`canbench.slurm.runstore`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from canbench.config import ConfigError
from canbench.flags import add_executor_flag, path_arg
from canbench.slurm.spec import resolve_spec_path

if TYPE_CHECKING:
    import pandas as pd

    from canbench.reports.check import CheckResult

log = logging.getLogger("canbench.cli.demo")

# (grid spec, why it is in the demo); every grid runs at its `smoke` scale profile
# packaged spec names (canbench.slurm.spec.resolve_spec_path): found from any folder and from an installed wheel
DEMO_GRIDS: list[tuple[str, str]] = [
    ("smoke", "CAN, SimCLR, MAE x 2 seeds: the baseline the check compares against"),
    ("table4_losses", "Table 4: final losses of CAN, SimCLR and MAE at 50% masking"),
    ("table5_ablation", "Table 5: removing C, A or N from CAN"),
]
DEFAULT_ROOT = "runs/demo"
DEFAULT_PDF = "reports/out/demo.pdf"


def default_baseline() -> Path:
    """The packaged baseline (``reports/baselines/smoke.csv`` in the checkout, package data when installed)."""
    import importlib.resources

    return Path(str(importlib.resources.files("canbench.reports") / "baselines" / "smoke.csv"))


def _baseline_path(baseline: str | Path | None, write_baseline: bool, check: bool) -> Path | None:
    """The baseline the demo checks against; a missing one fails before anything trains (never a silent skip)."""
    if not check:
        log.warning("--no-check: the results are NOT checked against any baseline; the exit code only says "
                    "whether every run finished, and the report has no regression page")
        return None
    path = default_baseline() if baseline is None else Path(baseline).expanduser()
    if not write_baseline and not path.is_file():
        raise ConfigError(f"demo baseline {path} does not exist; pass --baseline PATH, --write-baseline to create "
                          "it from this demo's results, or --no-check to run without a regression check")
    return path


def run_demo(root: str | Path = DEFAULT_ROOT, out_pdf: str | Path = DEFAULT_PDF,
             baseline: str | Path | None = None, write_baseline: bool = False,
             executor: str = "local", grids: list[str] | None = None, check: bool = True) -> int:
    """Run the demo; returns 0, or 1 when a run failed or the check found a cell that is not pass / inconclusive.

    ``baseline`` None is the packaged smoke baseline (:func:`default_baseline`); a missing baseline file is a
    ConfigError before anything runs, unless ``write_baseline`` creates it. ``check=False`` (``--no-check``) is
    the one way to skip the check, and says so loudly."""
    from canbench.reports.check import check as check_results
    from canbench.reports.check import write_baseline as _write_baseline
    from canbench.reports.collect import collect
    from canbench.reports.pdf import build_report
    from canbench.rundir import RunDir
    from canbench.slurm.control import submit_grid

    root = Path(root)
    t0 = time.perf_counter()
    baseline = _baseline_path(baseline, write_baseline, check)
    specs = [g for g, _ in DEMO_GRIDS] if grids is None else grids
    spec_paths = [resolve_spec_path(g) for g in specs]  # an unknown grid fails before anything is submitted
    for p in spec_paths:
        if not p.is_file():
            raise FileNotFoundError(f"grid spec not found: {p}")
    # every grid is submitted before waiting: their jobs share the cores, so no core idles while one grid's
    # last run finishes (each grid's smoke profile runs local_parallelism 1-thread jobs)
    grid_roots, current = [], []  # current: this demo's run folders (older ones may share a grid root)
    for i, (spec, spec_path) in enumerate(zip(specs, spec_paths), 1):
        why = dict(DEMO_GRIDS).get(spec, "")
        grid_root = root / spec_path.stem
        # one store for every demo grid: a config two grids name (CAN at the smoke defaults) trains once
        rep = submit_grid(spec_path, scale="smoke", executor=executor, root=grid_root, wait=False, store=root)
        log.info("[%d/%d] grid %s (%s): %d runs, %d submitted, %s", i, len(specs), spec, why, len(rep.runs),
                 len(rep.submitted), ", ".join(f"{len(v)} {k}" for k, v in rep.skipped.items()) or "nothing skipped")
        grid_roots.append(grid_root)
        current += [grid_root / r.folder_name for r in rep.runs]
    try:
        if any(p.stem == "smoke" for p in spec_paths):  # while the grids' jobs run
            random_init_reference(root)
        _wait_with_progress(grid_roots, current)
    except KeyboardInterrupt:
        from canbench.slurm.control import cancel_grid

        n = sum(len(cancel_grid(g)) for g in grid_roots)
        log.warning("interrupted: cancelled %d running jobs; finished runs are kept and `canbench demo` "
                    "(make demo) goes on from them", n)
        raise
    log.info("grids finished after %.0f s", time.perf_counter() - t0)
    results = collect(root)
    failed = [RunDir(d).status_path for d in current if RunDir(d).state == "failed"]
    if failed:
        log.error("%d runs failed: %s", len(failed), ", ".join(str(p.parent) for p in failed))
    check_result = None
    if write_baseline and baseline is not None:
        _write_baseline(results, baseline)
        log.info("wrote baseline %s", baseline)
    if baseline is not None:
        check_result = check_results(results, reference=baseline)
        print(check_result.message)
    pdf = build_report(root, out_pdf, title="canbench demo (smoke scale, built-in data set)",
                       check_result=check_result, flops_table=paper_flops_table())
    log.info("report: %s", pdf)
    log.info("demo finished in %.0f s", time.perf_counter() - t0)
    if failed:
        return 1
    if not check:
        return 0
    return demo_exit_code(check_result)


def demo_exit_code(result: CheckResult | None) -> int:
    """The demo fails on every verdict ``canbench check`` fails on, except *inconclusive*: two smoke-scale seeds
    cannot resolve a 2-point change on another CPU (the tolerance is wider than the meaningful difference), and
    that is the demo's noise, not a broken pipeline. Inconclusive cells are reported, never passed silently."""
    from canbench.reports.check import INCONCLUSIVE, PASS, UNREFERENCED

    if result is None:
        return 0
    verdicts = result.cells["verdict"]
    n_inc = int((verdicts == INCONCLUSIVE).sum())
    if n_inc:
        log.warning("%d of %d baseline cells are inconclusive: the smoke demo's seed noise is too large to confirm "
                    "them (canbench check would exit 1)", n_inc, result.reference_cells)
    return int(bool((~verdicts.isin([PASS, INCONCLUSIVE, UNREFERENCED])).any()) or not result.reference_cells)


RANDOM_INIT_SUITES = ["knn", "linear"]


def random_init_reference(root: Path, overrides: list[str] | None = None) -> Path:
    """``<root>/random-init``: the smoke model untrained (step 0) through the smoke grid's kNN and linear probe.

    The report draws it beside the methods (a random ViT is already a fair feature extractor on the built-in
    shapes, so the reader must see what pretraining has to beat). Costs one feature extraction (about 30
    CPU-seconds); reused once done. Runs in this process while the grids' jobs train, on one thread.
    ``overrides``: ``--set``-style keys on the smoke preset (tests make it tiny).
    """
    from canbench.benchmarks.perf.bench_eval_builtin import random_run
    from canbench.evaluation.runner import run_suites
    from canbench.train.trainer import use_threads

    run = random_run(Path(root), "smoke", list(overrides or []), name="random-init",
                     record={"benchmark": "smoke", "scale": "smoke", "grid": "smoke", "run_name": "random-init-s0",
                             "suites": RANDOM_INIT_SUITES})
    log.info("random-init reference: %s of the untrained smoke model in %s (while the grids train)",
             " and ".join(RANDOM_INIT_SUITES), run)
    quiet = logging.getLogger("canbench.evaluation")  # its per-epoch lines would bury the demo's progress
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with use_threads(1):  # the grids' jobs hold the cores
            records = run_suites(run, RANDOM_INIT_SUITES)
    finally:
        quiet.setLevel(level)
    log.info("random-init reference: %s", ", ".join(
        f"{s} {m}={v:.1f}" for s, r in records.items() for m, v in (r.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and m.startswith("top1")))
    return run


def paper_flops_table(arch: str = "vit_large") -> pd.DataFrame | None:
    """Training FLOPs per image of CAN and SimCLR with the paper's model settings at ``arch`` (counted on the
    meta device in seconds, no run needed): the FLOPs-ratio claim is a property of the models, so the demo's
    scorecard checks it even though its runs are ViT-micro."""
    import pandas as pd

    from canbench.methods.flops import method_flops_table
    from canbench.train.recipe import build_config

    try:
        rows = method_flops_table({m: build_config(m, None, {"model": {"arch": arch}}, validate_paths=False)
                                   for m in ("can", "simclr")})
    except Exception as exc:  # the report is still useful without it: the claim then says why
        log.warning("FLOPs count for %s failed (%s: %s); the FLOPs claim is left unchecked", arch,
                    type(exc).__name__, exc)
        return None
    df = pd.DataFrame([{"method": r["method"], "arch": r["arch"], "flops": r["train"]} for r in rows])
    df.attrs["source"] = f"training FLOPs per image counted on the meta device, paper model settings at {arch}"
    return df


def _wait_with_progress(grid_roots: list[Path], runs: list[Path], poll_s: float = 10.0) -> None:
    """Block until every grid is finished, logging the state and step of each of ``runs`` as they change."""
    from canbench.rundir import RunDir
    from canbench.slurm.control import wait_grid

    last = None
    pending = list(grid_roots)
    while pending:
        try:
            wait_grid(pending[0], poll_s=1.0, timeout_s=poll_s)
            pending.pop(0)
            continue
        except TimeoutError:
            pass
        states = {d.name: RunDir(d).read_status() for d in runs}
        done = sum(st.get("state") == "done" for st in states.values())
        active = "  ".join(f"{name.rsplit('-', 1)[0]}:{_progress(st)}" for name, st in states.items()
                           if st.get("state") not in ("done", "pending"))
        line = f"{done}/{len(states)} runs done  {active}"
        if line != last:
            log.info("  %s", line)
            last = line


def _progress(st: dict) -> str:
    """``running@16/48``, ``eval``, ``done``, ... for one run's status."""
    state = str(st.get("state"))
    if state == "running" and st.get("phase") == "eval":
        return "eval"
    if state == "running":
        total = st.get("total_steps")
        return f"running@{st.get('step', 0)}" + (f"/{total}" if total else "")
    return state


def add_demo_parser(subparsers) -> None:
    """``canbench demo``."""
    p = subparsers.add_parser("demo", help="the whole pipeline on the built-in data set (CPU, minutes)")
    p.add_argument("--root", default=DEFAULT_ROOT, type=path_arg, help="run store for the demo grids")
    p.add_argument("--out", default=DEFAULT_PDF, type=path_arg, help="the PDF report")
    p.add_argument("--baseline", default=None, metavar="CSV", type=path_arg,
                   help="baseline CSV for `canbench check` (default: the packaged reports/baselines/smoke.csv); "
                        "a missing file is an error")
    p.add_argument("--write-baseline", action="store_true", help="(re)write the baseline from these results")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the regression check (said loudly; exit code then only reflects failed runs)")
    p.add_argument("--grid", dest="grids", action="append", default=None, metavar="SPEC",
                   help="run this grid (a YAML path or packaged spec name) instead of the demo's grids; repeatable")
    add_executor_flag(p, "local")
    p.set_defaults(func=lambda a: run_demo(a.root, a.out, a.baseline, a.write_baseline, a.executor, a.grids,
                                           a.check))


__all__ = ["DEMO_GRIDS", "add_demo_parser", "default_baseline", "paper_flops_table", "random_init_reference",
           "run_demo"]
