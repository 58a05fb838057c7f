"""canbench.reports."""
