"""The paper's numbers as data: ``paper_numbers.csv`` loaded and validated.

One row per printed number. A cell is identified by :data:`PAPER_KEYS`; ``note`` records where a
number comes from and the paper's own inconsistencies (kept as printed, never "fixed").
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import pandas as pd

PAPER_CSV = Path(__file__).resolve().parent / "paper_numbers.csv"

PAPER_KEYS = ["table", "method", "arch", "pretrain_data", "epochs", "protocol", "metric", "variant"]
PAPER_COLUMNS = PAPER_KEYS + ["value", "note"]
TABLES = ("table1", "table2", "table3", "table4", "table5", "text", "fig1")
METHODS = ("can", "simclr", "mae")
PRETRAIN_DATA = ("in1k", "jft300m", "")  # "" where the paper does not state it
PROTOCOLS = ("linear", "finetune", "train_loss", "compute")


class PaperNumbersError(ValueError):
    """The paper-numbers CSV breaks its schema; the message names the file, row and column."""


def _check(df: pd.DataFrame, path: Path) -> None:
    """Raise PaperNumbersError on the first schema violation of ``df`` (read from ``path``)."""
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise PaperNumbersError(f"{path}: missing columns {missing} (expected {PAPER_COLUMNS})")
    extra = [c for c in df.columns if c not in PAPER_COLUMNS]
    if extra:
        raise PaperNumbersError(f"{path}: unexpected columns {extra} (expected {PAPER_COLUMNS})")
    for i, row in df.iterrows():
        where = f"{path}: row {i + 2}"  # +1 header, +1 one-based
        if row["table"] not in TABLES:
            raise PaperNumbersError(f"{where}: table={row['table']!r} is not one of {TABLES}")
        if row["method"] not in METHODS and not str(row["method"]).startswith("prior:"):
            raise PaperNumbersError(f"{where}: method={row['method']!r} is not one of {METHODS} "
                                    "or 'prior:<name>'")
        if row["pretrain_data"] not in PRETRAIN_DATA:
            raise PaperNumbersError(f"{where}: pretrain_data={row['pretrain_data']!r} is not one of "
                                    f"{PRETRAIN_DATA}")
        if row["protocol"] not in PROTOCOLS:
            raise PaperNumbersError(f"{where}: protocol={row['protocol']!r} is not one of {PROTOCOLS}")
        if not row["arch"] or not row["metric"]:
            raise PaperNumbersError(f"{where}: arch and metric must not be empty")
        if row["epochs"] != "" and not row["epochs"].isdigit():
            raise PaperNumbersError(f"{where}: epochs={row['epochs']!r} is not a whole number")
        try:
            value = float(row["value"])
        except ValueError:
            raise PaperNumbersError(f"{where}: value={row['value']!r} is not a number") from None
        if not math.isfinite(value):
            raise PaperNumbersError(f"{where}: value={row['value']!r} is not finite")
    dup = df[df.duplicated(PAPER_KEYS, keep=False)]
    if len(dup):
        keys = dup[PAPER_KEYS].drop_duplicates().to_dict("records")
        raise PaperNumbersError(f"{path}: duplicated cell keys {keys}")


def load_paper_numbers(path: str | os.PathLike = PAPER_CSV) -> pd.DataFrame:
    """Read and validate a paper-numbers CSV; key columns are strings, ``value`` a float."""
    path = Path(path)
    if not path.is_file():
        raise PaperNumbersError(f"paper numbers file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    _check(df, path)
    df["value"] = df["value"].astype(float)
    return df.reset_index(drop=True)


@functools.lru_cache(maxsize=1)
def _cached() -> pd.DataFrame:
    return load_paper_numbers(PAPER_CSV)


def paper_numbers() -> pd.DataFrame:
    """The shipped paper numbers (a fresh copy each call, validated once)."""
    return _cached().copy()


def paper_value(table: str, method: str, metric: str = "top1", **keys: str) -> float:
    """The single paper number matching ``table``, ``method``, ``metric`` and further key fields."""
    df = paper_numbers()
    sel = (df["table"] == table) & (df["method"] == method) & (df["metric"] == metric)
    for k, v in keys.items():
        if k not in PAPER_KEYS:
            raise KeyError(f"{k!r} is not a paper key column ({PAPER_KEYS})")
        sel &= df[k] == str(v)
    hits = df[sel]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} paper cells match table={table!r} method={method!r} metric={metric!r} "
                       f"{keys}")
    return float(hits["value"].iloc[0])
