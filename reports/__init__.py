"""canbench.reports: results -> tables, figures, claims scorecard, PDF report and regression checks.

Modules: ``collect`` (run store -> DataFrames), ``paper`` (the paper's numbers), ``cells`` (run ->
table cell mapping, protocol fingerprints), ``tables``, ``figures``, ``claims``, ``check``, ``pdf``,
``cli`` (``canbench report`` / ``canbench check``), ``synthetic`` (made-up stores for tests and demos).
"""
