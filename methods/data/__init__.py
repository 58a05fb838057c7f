"""canbench.methods.data."""
