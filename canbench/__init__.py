"""canbench: a reproducibility harness for CAN, SimCLR and MAE self-supervised ViT pretraining."""

__version__ = "0.1.0"
