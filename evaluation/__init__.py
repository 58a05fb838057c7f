"""canbench.evaluation: the evaluation suites (docs/protocols.md §3, docs/evaluation.md).

How a call flows: ``runner`` (``evaluate`` / ``run_suites``) -> ``source`` (what is evaluated, the one
encoder loader) -> ``context`` (settings, data family, device, feature cache) -> ``suites`` (the registry:
each suite's planner) -> ``results`` (result files and fingerprints). Settings and protocols: ``recipes``;
data splits and root checks: ``splits``. The suites themselves: ``knn``, ``linear`` (+ ``lars``),
``fewshot``, ``finetune`` (+ ``classifier``, ``lr_decay``), ``shift`` (+ ``shift_data``, ``label_space``);
shared pieces: ``features``, ``transforms``, ``external`` (public checkpoints). Submodules are imported on use.
"""
