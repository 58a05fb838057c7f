"""canbench.benchmarks: what is measured. ``grids/`` holds the paper's grid specs (one YAML per table or figure,
with scale profiles from CPU smoke to paper scale); ``perf/`` holds the speed and memory tools."""
