"""What the paper claims, as data: each checkable claim of the paper, its arms and the relation between them.

:data:`FIXED_CLAIMS` are written out (Table 1's chain, Table 4, Table 5, Fig. 6, Fig. 7); the method orderings of
Tables 2 and 3 and Fig. 1 are generated from ``paper_numbers.csv`` (:func:`ordering_claims`); :data:`FEWSHOT` and
:data:`SHIFT` count data sets. :mod:`canbench.reports.claims` judges them on the runs at hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from canbench.reports.paper import paper_numbers

METHOD_KEYS = ("pretrain.method.", "pretrain.optim.base_lr", "pretrain.optim.weight_decay")  # per-method recipes


@dataclass(frozen=True)
class ClaimSpec:
    """A checkable claim: which cells, which arms, and what relation between them.

    ``kind``: ``pairs`` (each pair (a, b): a is better than b, in the metric's direction), ``best`` (the arm whose
    ``axis`` value is ``best`` beats every other value of the sweep), ``slope`` (the metric falls as ``axis``
    grows), ``count`` (CAN ahead of every other method on k of n data sets; per shot count for few-shot).
    Arm filters match cell key fields (``method``, ``variant``, ``arch``...) or fingerprint keys.
    """

    id: str
    source: str
    statement: str
    tables: tuple[str, ...]
    protocol: str
    metric: str
    kind: str
    grid: str
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: tuple[tuple[str, str], ...] = ()
    axis: str = ""
    best: float | None = None
    where: dict[str, Any] = field(default_factory=dict)  # every cell of the claim matches these
    arm_keys: tuple[str, ...] = ("pretrain.method.",)
    paper: str = ""


def _v(variant: str) -> dict[str, Any]:
    return {"variant": variant}


T1_KEYS = ("pretrain.method.noise_mode", "pretrain.method.sigma_max")
T5_KEYS = ("pretrain.method.l_nce", "pretrain.method.lam", "pretrain.method.noise_mode", "pretrain.method.sigma_max")
T1_ARMS = {"none": _v("none"), "augment_only": _v("augment_only"),
           "loss_without_sigma_embedding": _v("loss_without_sigma_embedding"), "full": _v("full")}
T5_ARMS = {v: _v(v) for v in ("AN", "CN", "CA", "CAN")}
FIXED_CLAIMS: tuple[ClaimSpec, ...] = (
    ClaimSpec("table1_augment_only_beats_none", "Table 1 / Sec. 3.4",
              "Noise as augmentation alone helps: +noise > None", ("table1",), "linear", "top1", "pairs",
              "table1_noise", T1_ARMS, (("augment_only", "none"),), arm_keys=T1_KEYS, paper="68.6 vs 67.9"),
    ClaimSpec("table1_full_beats_no_embedding", "Table 1 / Sec. 3.4",
              "The noise-level embedding matters: Full > +noise, +loss (no embedding)", ("table1",), "linear",
              "top1", "pairs", "table1_noise", T1_ARMS, (("full", "loss_without_sigma_embedding"),),
              arm_keys=T1_KEYS, paper="68.9 vs 68.4"),
    ClaimSpec("table1_no_embedding_below_augment_only", "Table 1",
              "The denoising loss without the embedding is worse than noise alone: +noise, +loss < +noise",
              ("table1",), "linear", "top1", "pairs", "table1_noise", T1_ARMS,
              (("augment_only", "loss_without_sigma_embedding"),), arm_keys=T1_KEYS, paper="68.4 vs 68.6"),
    ClaimSpec("table1_full_beats_none", "Table 1 / Sec. 3.4", "Denoising with the embedding helps: Full > None",
              ("table1",), "linear", "top1", "pairs", "table1_noise", T1_ARMS, (("full", "none"),),
              arm_keys=T1_KEYS, paper="68.9 vs 67.9"),
    ClaimSpec("table4_can_lower_contrastive", "Table 4 / Sec. 5",
              "At 50% masking CAN ends with a lower contrastive loss than SimCLR", ("table4",), "train_loss",
              "contrastive_loss", "pairs", "table4_losses", {"can": {"method": "can"}, "simclr": {"method": "simclr"}},
              (("can", "simclr"),), where={"pretrain.method.mask_ratio": 0.5}, arm_keys=METHOD_KEYS,
              paper="9.143 vs 9.157"),
    ClaimSpec("table4_can_lower_reconstruction", "Table 4 / Sec. 5",
              "At 50% masking CAN ends with a lower reconstruction loss than MAE", ("table4",), "train_loss",
              "reconstruction_loss", "pairs", "table4_losses", {"can": {"method": "can"}, "mae": {"method": "mae"}},
              (("can", "mae"),), where={"pretrain.method.mask_ratio": 0.5}, arm_keys=METHOD_KEYS,
              paper="0.1633 vs 0.1658"),
    ClaimSpec("table5_each_term_helps", "Table 5", "Removing any of C, A, N lowers linear-probe accuracy",
              ("table5",), "linear", "top1", "pairs", "table5_ablation", T5_ARMS,
              (("CAN", "AN"), ("CAN", "CN"), ("CAN", "CA")), arm_keys=T5_KEYS,
              paper="CAN 68.9 > AN 42.8, CN 68.5, CA 67.9"),
    ClaimSpec("table5_removing_c_hurts_most", "Table 5 / Sec. 5", "Removing the contrastive term (AN) hurts the most",
              ("table5",), "linear", "top1", "pairs", "table5_ablation", T5_ARMS, (("CN", "AN"), ("CA", "AN")),
              arm_keys=T5_KEYS, paper="AN 42.8 < CN 68.5, CA 67.9"),
    ClaimSpec("fig6_simclr_degrades_with_masking", "Fig. 6 / Sec. 5",
              "SimCLR's linear-probe accuracy decreases as the masking rate increases", ("fig6",), "linear", "top1",
              "slope", "fig6_masking_rate", axis="pretrain.method.mask_ratio", where={"method": "simclr"},
              arm_keys=("pretrain.method.mask_ratio",), paper="decreasing curve"),
    ClaimSpec("fig6_can_peaks_at_nonzero_mask", "Fig. 6 / Sec. 5",
              "CAN peaks at a non-zero masking rate below MAE's 75% (its default 50% beats 0% and 75%)", ("fig6",),
              "linear", "top1", "pairs", "fig6_masking_rate",
              {"50%": {"pretrain.method.mask_ratio": 0.5}, "0%": {"pretrain.method.mask_ratio": 0.0},
               "75%": {"pretrain.method.mask_ratio": 0.75}}, (("50%", "0%"), ("50%", "75%")),
              where={"method": "can"}, arm_keys=("pretrain.method.mask_ratio",), paper="peak at 50%"),
    ClaimSpec("fig7_best_l_nce", "Fig. 7 left / Sec. 5", "The best contrastive weight is l_nce = 0.03", ("fig7",),
              "linear", "top1", "best", "fig7_loss_weights", axis="pretrain.method.l_nce", best=0.03,
              where={"pretrain.method.sigma_max": 0.05, "pretrain.method.lam": 0.7},
              arm_keys=("pretrain.method.l_nce",), paper="best at 0.03"),
    ClaimSpec("fig7_best_sigma_max", "Fig. 7 middle / Sec. 5", "The best noise level is sigma_max = 0.05", ("fig7",),
              "linear", "top1", "best", "fig7_loss_weights", axis="pretrain.method.sigma_max", best=0.05,
              where={"pretrain.method.l_nce": 0.03, "pretrain.method.lam": 0.7},
              arm_keys=("pretrain.method.sigma_max", "pretrain.method.noise_mode"), paper="best at 0.05"),
)
METHOD_TABLES = {"table2": "table2_jft", "table3": "table3_in1k", "fig1": "table2_jft"}
DATA_LABEL = {"in1k": "IN-1K", "jft300m": "JFT-300M"}


def ordering_claims() -> tuple[ClaimSpec, ...]:
    """Tables 2 and 3 and Fig. 1: at each (architecture, epochs) where the paper runs two or more of CAN, SimCLR
    and MAE, they rank as the paper's numbers do (generated from ``paper_numbers.csv``)."""
    p = paper_numbers()
    p = p[p["table"].isin(list(METHOD_TABLES)) & p["protocol"].isin(["linear", "finetune"])
          & p["method"].isin(["can", "simclr", "mae"])]
    out = []
    for (table, protocol, arch, epochs), g in p.groupby(["table", "protocol", "arch", "epochs"], sort=False):
        if len(g) < 2:
            continue
        g = g.sort_values("value", ascending=False)
        ms, vals = list(g["method"]), list(g["value"])
        order = " > ".join(f"{m.upper() if m != 'simclr' else 'SimCLR'} {v:g}" for m, v in zip(ms, vals))
        what = "finetune" if protocol == "finetune" else "linear probe"
        out.append(ClaimSpec(
            f"{table}_{protocol}_{arch}_{epochs}ep_order", "Fig. 1" if table == "fig1" else f"Table {table[-1]}",
            f"{' > '.join(m.upper() if m != 'simclr' else 'SimCLR' for m in ms)} in {what} top-1 "
            f"({arch}, {epochs} ep, {DATA_LABEL.get(g['pretrain_data'].iloc[0], '')})",
            (table,), protocol, "top1", "pairs", METHOD_TABLES[table],
            {m: {"method": m, "arch": arch, "epochs": epochs} for m in ms},
            tuple(zip(ms[:-1], ms[1:])), arm_keys=METHOD_KEYS, paper=order))
    return tuple(out)


FEWSHOT = ClaimSpec("fewshot_can_best", "Fig. 4 / Sec. 4.3", "CAN beats MAE and SimCLR on most few-shot data sets",
                    (), "fewshot", "top1", "count", "table2_jft (suites: fewshot) or smoke", arm_keys=METHOD_KEYS,
                    paper="CAN best on nearly all of 9 sets (ViT-L, JFT-300M, 5000 ep)")
SHIFT = ClaimSpec("robustness_can_best", "Fig. 5 / Sec. 4.4",
                  "CAN is more robust to distribution shift than MAE and SimCLR (ahead on most sets)", (), "shift",
                  "top1", "count", "table2_jft (suites: finetune, shift) or smoke", arm_keys=METHOD_KEYS,
                  paper="CAN ahead in nearly all of 7 sets")


def all_claim_specs() -> tuple[ClaimSpec, ...]:
    """Every pairwise / best / slope claim (the counting claims are :data:`FEWSHOT` and :data:`SHIFT`)."""
    return FIXED_CLAIMS + ordering_claims()


__all__ = ["FEWSHOT", "FIXED_CLAIMS", "METHOD_KEYS", "SHIFT", "ClaimSpec", "all_claim_specs", "ordering_claims"]
