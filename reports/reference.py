"""The paper as a reference: every printed number of Tables 1-5 and Fig. 1 with the full protocol a reproduction
must have to be compared with it.

A paper cell's *expected fingerprint* is built from the same pieces a run records, so the two compare key by key:

- ``pretrain.*``: every result-affecting key of the training config of the paper-scale grid run that stands for
  the cell (``benchmarks/grids/paper/*.yaml`` expanded at ``--scale paper``; their presets are the paper's
  recipes, docs/protocols.md), and ``pretrain.data.identity.*``: a complete ImageNet-1k train split, or declared
  JFT-300M for Table 2 / Fig. 1 (:mod:`canbench.data.identity`);
- ``linear.*`` / ``finetune.*``: the paper's linear probe (Table 11) or finetune (Table 10) recipe on IN-1K
  (:func:`canbench.evaluation.recipes.paper_recipe`), and ``eval.data.*``: complete IN-1K train and val splits.

Only the expected keys are compared: a run's other fields (the suite's derived protocol fields, the encoder
description) follow from them.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd

from canbench.data.identity import declared_identity, full_identity
from canbench.evaluation.recipes import paper_recipe
from canbench.reports.cells import POSITION_KEYS, cell_key, eval_fingerprint, pretrain_fingerprint
from canbench.reports.collect import config_meta
from canbench.reports.paper import paper_numbers
from canbench.slurm.grid import expand
from canbench.slurm.spec import GRID_DIR, load_spec

PAPER_GRIDS = ("table1_noise", "table2_jft", "table3_in1k", "table4_losses", "table5_ablation")
REFERENCE_TABLES = ("table1", "table2", "table3", "table4", "table5", "fig1")
REFERENCE_PROTOCOLS = ("linear", "finetune", "train_loss")
BENCHMARK_TABLES = {"table2": ("table2", "fig1")}  # --benchmark table2 also selects Fig. 1's finetune cells
IMAGENET = "imagenet-1k"


def grid_of(table: str) -> str:
    """The packaged grid that reproduces paper table ``table`` (fig1's finetune cells come from Table 2's)."""
    table = "table2" if table == "fig1" else table
    return next(g for g in PAPER_GRIDS if g.startswith(table + "_"))


@functools.lru_cache(maxsize=1)
def _paper_runs() -> tuple[tuple[tuple[str, ...], str, dict[str, Any]], ...]:
    """(cell position, training data set, training recipe) of every run of the paper-scale grids."""
    out = []
    for name in PAPER_GRIDS:
        spec = load_spec(GRID_DIR / "paper" / f"{name}.yaml")
        for run in expand(spec, "paper", check_paths=False, world_size=spec.resources("paper").world_size):
            cfg = run.cfg.to_dict()
            meta = config_meta(cfg)
            for suite in [*run.suites, "pretrain"]:
                key = cell_key({**meta, "suite": suite})
                out.append((tuple(key[k] for k in POSITION_KEYS), cfg["data"]["dataset"], meta["recipe"]))
    return tuple(out)


def eval_data_identity() -> dict[str, Any]:
    """What the paper's linear probe and finetune train and test on: complete IN-1K train and val splits."""
    return {"train": {"name": "imagenet", "split": "train", "identity": full_identity(IMAGENET, "train")},
            "test": {"name": "imagenet", "split": "val", "identity": full_identity(IMAGENET, "val")}}


def expected_fingerprint(key: dict[str, str]) -> dict[str, Any] | None:
    """The protocol fingerprint a reproduction of paper cell ``key`` must have; None when no paper grid runs it."""
    pos = tuple(key[k] for k in POSITION_KEYS)
    hit = next((r for r in _paper_runs() if r[0] == pos), None)
    if hit is None:
        return None
    _, dataset, recipe = hit
    ident = declared_identity(dataset, "train") if dataset == "jft" else full_identity(IMAGENET, "train")
    fp = pretrain_fingerprint(recipe, ident)
    if key["protocol"] in ("linear", "finetune"):
        fp.update(eval_fingerprint(key["protocol"], {"eval_config": paper_recipe(key["protocol"]),
                                                      "eval_data": eval_data_identity()}))
    return fp


def paper_reference(benchmarks: list[str] | None = None) -> pd.DataFrame:
    """The paper's cells a reproduction is checked against (CELL_KEYS, mean, std NaN, n 1, expected_fp).

    Prior work (``prior:*``), compute figures and numbers quoted from the text are not reproduced by the grids
    and are left out. ``benchmarks`` narrows the reference to some tables (``table2`` includes Fig. 1).
    """
    p = paper_numbers()
    p = p[p["table"].isin(REFERENCE_TABLES) & p["protocol"].isin(REFERENCE_PROTOCOLS)
          & ~p["method"].str.startswith("prior:")].copy()
    if benchmarks:
        unknown = sorted(set(benchmarks) - set(REFERENCE_TABLES))
        if unknown:
            raise ValueError(f"--benchmark {', '.join(unknown)}: the paper reference has "
                             f"{', '.join(REFERENCE_TABLES)}")
        tables = {t for b in benchmarks for t in BENCHMARK_TABLES.get(b, (b,))}
        p = p[p["table"].isin(tables)]
    p["dataset"], p["shots"] = "", ""
    p["mean"], p["std"], p["n"] = p["value"], float("nan"), 1
    p["expected_fp"] = [expected_fingerprint(r) for r in p.to_dict("records")]
    return p.reset_index(drop=True)


__all__ = ["BENCHMARK_TABLES", "PAPER_GRIDS", "REFERENCE_PROTOCOLS", "REFERENCE_TABLES", "eval_data_identity",
           "expected_fingerprint", "grid_of", "paper_reference"]
