"""canbench.benchmarks.perf: speed and memory of the training step and the input pipeline (figures in BENCHMARKS.md)."""
