"""Datasets of the paper (Sec. 4) behind one entry point, `get_dataset`, preprocessed as the
reference code did; see README_DATA.md for where each archive comes from and the expected layout.
"""

from .archive import MVTEC_SHA256, download_mvtec
from .base import IMAGENET_MEAN, IMAGENET_STD, FileDataset, ImageDataset
from .errors import (ArchiveError, AspectRatioWarning, DatasetNotFoundError, EmptyFolderError, EmptyMaskError,
                     ImageReadError, MaskSizeError, MissingMaskError)
from .factory import DATASET_NAMES, dataset_options, describe_options, get_dataset, load_images
from .io import IMAGE_EXTENSIONS, list_images
from .medical import RETINA_CLASSES
from .mvtec import MVTEC_CATEGORIES
from .onecls import CLASS_NAMES
from .roots import ENV_VAR
from .synthetic import make_synthetic

__all__ = [
    "get_dataset", "dataset_options", "describe_options", "load_images", "list_images", "make_synthetic",
    "download_mvtec",
    "DATASET_NAMES", "MVTEC_CATEGORIES", "RETINA_CLASSES", "CLASS_NAMES", "MVTEC_SHA256", "ENV_VAR", "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageDataset", "FileDataset",
    "DatasetNotFoundError", "MissingMaskError", "MaskSizeError", "EmptyMaskError", "EmptyFolderError", "ImageReadError",
    "ArchiveError", "AspectRatioWarning",
]
