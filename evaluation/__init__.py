"""canbench.evaluation."""
