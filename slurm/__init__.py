"""canbench.slurm."""
