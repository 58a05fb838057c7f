"""Label-space rules: how a classifier's logits are scored against a shift set's targets.

Each rule maps logits (N, C) and integer targets (N,) to ``correct`` and ``valid`` boolean masks
(N,); top-1 = correct.sum() / valid.sum(). Rules:

- :class:`Top1` plain argmax over all C logits (ImageNet val / V2 / Sketch, 1000-way A/R, built-in).
- :class:`SubsetArgmax` argmax restricted to a class subset (ImageNet-A / -R: 200 of 1000 columns).
- :class:`MultiLabel` correct iff argmax is in the image's label list; empty lists are invalid
  (ImageNet-ReaL: excluded from numerator and denominator). Targets index the label lists.
- :class:`GroupMax` each target class scores the max of its mapped logits, argmax over the groups
  (ObjectNet: 113 classes, each a set of ImageNet classes). Targets are group indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LabelRule:
    """Base: ``score(logits, targets) -> (correct, valid)``, both bool (N,)."""

    name = "base"

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> str:
        """Short text for the fingerprint's ``class_subset_rule``."""
        return self.name


class Top1(LabelRule):
    """argmax over all logits == target."""

    name = "top1_all_classes"

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        correct = logits.argmax(dim=1) == targets.to(logits.device)
        return correct, torch.ones_like(correct)


class SubsetArgmax(LabelRule):
    """argmax over ``indices`` columns only; targets are indices in the full label space."""

    name = "subset_argmax"

    def __init__(self, indices: Sequence[int], tag: str = "") -> None:
        if len(indices) == 0 or len(set(indices)) != len(indices):
            raise ValueError(f"class subset must be non-empty and without repeats, got {len(indices)} entries")
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.tag = tag

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices.to(logits.device)
        if int(idx.max()) >= logits.shape[1]:
            raise ValueError(f"class subset index {int(idx.max())} >= number of logits {logits.shape[1]}")
        pred = idx[logits.index_select(1, idx).argmax(dim=1)]  # back to the full label space
        correct = pred == targets.to(logits.device)
        return correct, torch.ones_like(correct)

    def describe(self) -> str:
        tag = f" ({self.tag})" if self.tag else ""
        return f"argmax over {len(self.indices)} classes{tag}"


class MultiLabel(LabelRule):
    """Correct iff argmax is in ``label_lists[target]``; an empty list makes the sample invalid."""

    name = "multi_label"

    def __init__(self, label_lists: Sequence[Sequence[int]], num_classes: int = 1000) -> None:
        self.lengths = torch.tensor([len(lab) for lab in label_lists], dtype=torch.long)
        width = max(1, int(self.lengths.max()) if len(label_lists) else 1)
        # (M, width) padded with -1, so membership is a comparison, not a Python loop
        self.table = torch.full((len(label_lists), width), -1, dtype=torch.long)
        for i, lab in enumerate(label_lists):
            if lab:
                if min(lab) < 0 or max(lab) >= num_classes:
                    raise ValueError(f"label list {i} has a class outside [0, {num_classes}): {list(lab)}")
                self.table[i, : len(lab)] = torch.as_tensor(list(lab))

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = targets.long().cpu()
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= len(self.table)):
            raise ValueError(f"target index outside the {len(self.table)} label lists")
        pred = logits.argmax(dim=1).cpu()
        correct = (self.table[t] == pred.view(-1, 1)).any(dim=1)
        valid = self.lengths[t] > 0
        return (correct & valid).to(logits.device), valid.to(logits.device)

    def describe(self) -> str:
        return "ReaL multi-label; empty label lists excluded"


class GroupMax(LabelRule):
    """Class j scores max(logits[:, groups[j]]); argmax over groups == target (a group index)."""

    name = "group_max"

    def __init__(self, groups: Sequence[Sequence[int]], tag: str = "") -> None:
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError("every group needs at least one class index")
        width = max(len(g) for g in groups)
        # pad each group by repeating its first index: the max is unchanged
        self.table = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in groups], dtype=torch.long)
        self.tag = tag

    def group_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, G): per group the max of its mapped logits."""
        table = self.table.to(logits.device)
        return logits[:, table].amax(dim=2)  # (N, G, width) -> (N, G)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        correct = self.group_scores(logits).argmax(dim=1) == targets.to(logits.device)
        return correct, torch.ones_like(correct)

    def describe(self) -> str:
        tag = f" ({self.tag})" if self.tag else ""
        return f"max over mapped logits, argmax over {len(self.table)} groups{tag}"
