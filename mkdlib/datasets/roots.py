"""Where each dataset lives on disk and how to obtain it (README_DATA.md).

`root=None` means `$MKDLIB_DATA/<subfolder>`; an explicit root may be the dataset folder itself or
its parent. Nothing here knows a machine-specific path.
"""

import os
from pathlib import Path

from .errors import DatasetNotFoundError

ENV_VAR = "MKDLIB_DATA"

# Default subfolders of $MKDLIB_DATA, first match wins. "" = the root itself (torchvision's own
# layout: MNIST/raw, FashionMNIST/raw, cifar-10-batches-py). "OCT2017 " (trailing space) is what
# Kaggle's kermany2018 archive unpacks to.
SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("",),
    "fashionmnist": ("",),
    "cifar10": ("",),
    "mvtec": ("mvtec", "mvtec_anomaly_detection"),
    "retina": ("OCT2017", "OCT2017 "),
    "headct": ("head_ct",),
    "brainmri": ("brain_mri", "brain_tumor_dataset"),
}

HOW_TO_GET: dict[str, str] = {
    "mnist": "pass download=True (needs internet) or put the idx files in <root>/MNIST/raw/",
    "fashionmnist": "pass download=True (needs internet) or put the idx files in <root>/FashionMNIST/raw/",
    "cifar10": "pass download=True (needs internet) or unpack cifar-10-python.tar.gz into <root>/",
    "mvtec": "download mvtec_anomaly_detection.tar.xz from https://www.mvtec.com/company/research/"
    "datasets/mvtec-ad and unpack it with mkdlib.datasets.download_mvtec(root, archive=...)",
    "retina": "download OCT2017 (Kermany et al.) from Mendeley Data (doi:10.17632/rscbjbr9sj) or "
    "Kaggle 'kermany2018' and unpack it so that <root>/train and <root>/test exist",
    "headct": "download Kaggle 'felipekitamura/head-ct-hemorrhage' and unpack it so that "
    "<root>/labels.csv and <root>/images/ exist",
    "brainmri": "download Kaggle 'navoneel/brain-mri-images-for-brain-tumor-detection' and unpack it "
    "so that <root>/yes/ and <root>/no/ exist",
}


def not_found(name: str, path: Path | str, lead: str = "") -> DatasetNotFoundError:
    """An error naming the expected path and how to get the data."""
    lead = lead or f"{name} data not found: expected {path}."
    return DatasetNotFoundError(
        f"{lead} To obtain it: {HOW_TO_GET.get(name, 'see README_DATA.md')} "
        f"(details in mkdlib/datasets/README_DATA.md; pass root=... or set ${ENV_VAR})."
    )


def data_root(name: str, root: str | Path | None) -> Path:
    """The explicit root, else `$MKDLIB_DATA` (the subfolder is resolved by `locate`)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if not env:
        where = Path(f"${ENV_VAR}") / SUBFOLDERS.get(name, ("",))[0]
        raise not_found(name, where, f"{name}: no root given and ${ENV_VAR} is unset; expected {where}.")
    return Path(env).expanduser()


def locate(name: str, root: str | Path | None, marker: str) -> Path:
    """The folder `d` with `d/marker` present: the root itself or one of its default subfolders."""
    base = data_root(name, root)
    for folder in [base] + [base / sub for sub in SUBFOLDERS[name]]:
        if (folder / marker).exists():
            return folder
    # without a root: said as the documented location, not this machine's expansion of it
    raise not_found(name, (Path(f"${ENV_VAR}") / SUBFOLDERS[name][0] if root is None else base) / marker)
