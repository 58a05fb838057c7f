"""canbench.data: view augmentation, the built-in data set, the data set registry, the pretraining loader."""

from .augment import (
    NUM_PHOTO_PARAMS,
    PhotoParams,
    TwoViewTransform,
    ViewAugConfig,
    apply_photometric,
    blur_kernel_size,
    crop_resize,
    sample_crop,
    sample_photometric,
    unpack_photometric,
)
from .builtin import HELDOUT_CLASSES, MAIN_CLASSES, BuiltinShapes, DigitsDataset, load_digits
from .datasets import DATASETS, DatasetNotFoundError, build_dataset, check_dataset_layout
from .loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainDataset,
    StepBatchSampler,
    build_pretrain_loader,
    collate_views,
    to_model_input,
)

__all__ = [
    "NUM_PHOTO_PARAMS", "PhotoParams", "TwoViewTransform", "ViewAugConfig", "apply_photometric",
    "blur_kernel_size", "crop_resize", "sample_crop", "sample_photometric", "unpack_photometric",
    "HELDOUT_CLASSES", "MAIN_CLASSES", "BuiltinShapes", "DigitsDataset", "load_digits",
    "DATASETS", "DatasetNotFoundError", "build_dataset", "check_dataset_layout",
    "IMAGENET_MEAN", "IMAGENET_STD", "PretrainDataset", "StepBatchSampler", "build_pretrain_loader",
    "collate_views", "to_model_input",
]
