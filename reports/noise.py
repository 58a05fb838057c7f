"""The noise model behind every verdict: how much a number moves when nothing changed, and where that figure
comes from (docs/reports.md, "The statistical rule").

A metric's *noise* is a standard deviation with its degrees of freedom and its source:

- from seeds: the pooled seed-to-seed standard deviation of the reference's cells of the same family
  (protocol and metric) that have two or more seeds, ``s^2 = sum((n_i - 1) s_i^2) / sum(n_i - 1)`` with
  ``df = sum(n_i - 1)``;
- else a documented per-family *noise floor* (:data:`FLOORS`, df = infinity): what published re-runs of
  one recipe show.

A difference ``d`` between a candidate mean (``n_c`` seeds) and a reference mean (``n_r`` seeds) is judged
against ``tolerance = q * s * sqrt(1 / n_c + 1 / n_r)``, with ``q`` the two-sided Student-t (normal for a
floor) quantile at ``alpha``. The spread never comes from the candidate, so one collapsed seed cannot widen
its own tolerance. A tolerance wider than the family's *meaningful difference* (:data:`FLOORS` ``cap``) can
neither confirm nor rule out a change worth reporting: the verdict is then *inconclusive*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

PASS, REGRESSION, IMPROVEMENT, INCONCLUSIVE = "pass", "regression", "improvement", "inconclusive"
HOLDS, FAILS = "holds", "does not hold"


@dataclass(frozen=True)
class Floor:
    """A noise floor (standard deviation of one run), the largest tolerance worth calling a pass, and the source.

    ``df``: the degrees of freedom of the figure (infinity for a published figure taken as known; a floor measured
    here from k runs of r seeds each has ``k * (r - 1)``); ``scale``: the scale profile it was measured at. A floor
    decides only at its own scale: a paper-scale figure is never borrowed for a smoke-scale verdict."""

    sd: float
    cap: float
    source: str
    relative: bool = False  # sd and cap are fractions of the value (losses)
    df: float = math.inf
    scale: str = "paper"


_LINEAR = Floor(0.4, 2.0, "retraining one recipe moves a linear probe by ~0.36-0.4 top-1 points "
                          "(facebookresearch/vissl#301, orashi/Fast-MoCo#2)")
_FINETUNE = Floor(0.1, 1.0, "ViT-B finetune seeds 83.63 / 83.66 / 83.52 / 83.46, std 0.08; ViT-L +-0.07 "
                            "(facebookresearch/mae, FINETUNE.md)")
_KNN = Floor(0.4, 2.0, "assumed equal to the linear probe's (no public kNN re-run figure)")
_FEWSHOT = Floor(0.5, 3.0, "assumed: few-shot subsets are resampled per seed, so wider than the linear probe")
_SHIFT = Floor(0.3, 2.0, "re-evaluating one checkpoint elsewhere moves IN-1k by ~0.1 (facebookresearch/mae#90), "
                         "taken x3 for the finetune that precedes it")
_SHIFT_HARD = Floor(0.9, 3.0, "re-evaluating one checkpoint elsewhere moves IN-A up to 0.9 (facebookresearch/mae#90)")
_LOSS = Floor(0.002, 0.02, "assumed: final training losses of one recipe re-run vary by ~0.2% of their value",
              relative=True)
FLOORS: dict[str, Floor] = {"linear": _LINEAR, "finetune": _FINETUNE, "knn": _KNN, "fewshot": _FEWSHOT,
                            "shift": _SHIFT, "train_loss": _LOSS}
HARD_SHIFT_SETS = ("imagenet_a", "imagenet_r", "objectnet", "imagenet_sketch")


def floor_for(protocol: str, metric: str, dataset: str = "") -> Floor:
    """The paper-scale (published) floor of a family; unknown protocols get the linear probe's."""
    if protocol == "shift" and dataset in HARD_SHIFT_SETS:
        return _SHIFT_HARD
    if "loss" in metric and protocol != "train_loss":
        return _LOSS
    return FLOORS.get(protocol, _LINEAR)


# Floors measured at a scale smaller than the paper's: (scale, protocol, metric) -> Floor with the df of the
# measurement and how it was made (docs/reports.md). Filled from measurements, never from a paper-scale figure.
MEASURED_FLOORS: dict[tuple[str, str, str], Floor] = {}


def scale_floor(protocol: str, metric: str, dataset: str = "", scale: str = "paper") -> Floor | None:
    """The floor measured at ``scale`` (the published figures at paper scale); None when nothing was measured at
    that scale: a figure from another scale never decides a verdict."""
    if scale == "paper":
        return floor_for(protocol, metric, dataset)
    return MEASURED_FLOORS.get((scale, protocol, metric))


@dataclass(frozen=True)
class Noise:
    """A standard deviation with its degrees of freedom (inf for a floor) and where it comes from."""

    sd: float
    df: float
    source: str

    def describe(self) -> str:
        df = "floor" if math.isinf(self.df) else f"df {self.df:g}"
        return f"sd {self.sd:.3g} ({df}: {self.source})"


def pooled(stds: list[float], ns: list[int]) -> tuple[float, int] | None:
    """Pooled standard deviation and degrees of freedom of cells with two or more seeds (None without any)."""
    num = den = 0.0
    for s, n in zip(stds, ns):
        if n is not None and n >= 2 and s is not None and math.isfinite(s):
            num += (n - 1) * s * s
            den += n - 1
    return (math.sqrt(num / den), int(den)) if den else None


def quantile(alpha: float, df: float) -> float:
    """Two-sided critical value at ``alpha``: Student-t with ``df`` degrees of freedom, normal for df = inf."""
    if math.isinf(df):
        return float(stats.norm.ppf(1 - alpha / 2))
    return float(stats.t.ppf(1 - alpha / 2, df))


def tolerance(noise: Noise, n_c: int, n_r: int, alpha: float) -> float:
    """Half-width of the interval a difference of two means (``n_c``, ``n_r`` seeds) stays in when nothing changed."""
    return quantile(alpha, noise.df) * noise.sd * math.sqrt(1.0 / n_c + 1.0 / n_r)


def verdict(better: float, tol: float, cap: float, identical: bool = False) -> str:
    """``better`` = the difference in the direction of improvement. Identical values pass whatever the noise."""
    if identical:
        return PASS
    if better < -tol:
        return REGRESSION
    if better > tol:
        return IMPROVEMENT
    return PASS if tol <= cap else INCONCLUSIVE


def claim_verdict(diff: float, tol: float) -> str:
    """A claim "A beats B" with ``diff`` = A - B oriented so positive supports it."""
    if diff > tol:
        return HOLDS
    if diff < -tol:
        return FAILS
    return INCONCLUSIVE


__all__ = ["FAILS", "FLOORS", "Floor", "HOLDS", "IMPROVEMENT", "INCONCLUSIVE", "MEASURED_FLOORS", "Noise", "PASS",
           "REGRESSION", "claim_verdict", "floor_for", "pooled", "quantile", "scale_floor", "tolerance", "verdict"]
