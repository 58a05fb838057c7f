"""canbench.evaluation: the evaluation suites (PROTOCOLS.md §3); see docs/evaluation.md.

One concern per module: ``features`` (frozen-encoder features, exact sharding), ``knn``, ``fewshot``,
``lars``, ``schedule``, ``linear`` (linear probe), ``lr_decay``, ``classifier`` + ``finetune``,
``label_space`` + ``shift_data`` + ``shift`` (distribution shift), ``external`` (public checkpoints),
``transforms``, ``results`` (result files and fingerprints); ``suites`` (``run_suites``: a run folder's
suites end to end), ``presets`` (evaluation profiles and settings), ``cli`` (``canbench evaluate``).
Submodules are imported on use.
"""
