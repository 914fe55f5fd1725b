"""Exceptions (and the one warning) raised by the data loaders (docs/differences.md).

Each names the file or folder at fault and, where data is missing, how to obtain it.
"""


class DatasetNotFoundError(FileNotFoundError):
    """A data root, dataset folder or listed file is missing."""


class MissingMaskError(FileNotFoundError):
    """A defective test image has no ground-truth mask."""


class MaskSizeError(ValueError):
    """A ground-truth mask's native size differs from its image's: stretching it would misplace defects."""


class EmptyFolderError(ValueError):
    """A class or defect folder holds no images."""


class ImageReadError(ValueError):
    """An image file is unreadable or corrupt."""


class ArchiveError(ValueError):
    """An archive fails its checksum or holds an unsafe member."""


class EmptyMaskError(ValueError):
    """A defective test image's mask marks no defect pixel: the pixel metrics would fail or be lowered."""


class AspectRatioWarning(UserWarning):
    """Non-square images are resized to a square (the paper's protocol), which distorts them; said once."""
