"""canbench.train: a pretraining run from recipe to checkpoint (presets, trainer, training step, checkpoints)."""
