"""canbench.benchmarks."""
