"""Medical datasets of the paper (Sec. 4, Tables 5-6): Retinal OCT, HeadCT, BrainMRI.

OCT2017 has an official split; train on NORMAL only (the released code trained on all four folders,
a bug). HeadCT and BrainMRI have none: a seeded split holds out 10 normals + all anomalies for test.
All use the MVTec recipe (128 px, [0, 1]); the paper's BrainMRI images are 256 px (`image_size=256`).
"""

from collections import Counter
from pathlib import Path

import pandas as pd

from .base import FileDataset
from .io import list_images
from .roots import locate, not_found
from .splits import seeded_split

RETINA_CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")  # NORMAL is the normal class


def _folder(name: str, folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise not_found(name, folder)
    return list_images(folder)


def build_retina(root: str | Path | None, *, split: str, image_size: int | None, **kwargs) -> FileDataset:
    base = locate("retina", root, f"{split}/NORMAL")
    files, labels, groups = [], [], []
    for c in ("NORMAL",) if split == "train" else RETINA_CLASSES:
        images = _folder("retina", base / split / c)
        files += images
        labels += [int(c != "NORMAL")] * len(images)
        groups += [c] * len(images)
    return FileDataset(files, labels, groups, mask_files=None, image_size=image_size or 128,
                       name="retina", split=split, **kwargs)


def _seeded(name: str, files: list[Path], labels: list[int], groups: list[str], *, split: str, seed: int,
            n_test_normal: int, image_size: int | None, **kwargs) -> FileDataset:
    train, test = seeded_split(labels, seed, n_test_normal)
    idx = train if split == "train" else test
    return FileDataset([files[i] for i in idx], [labels[i] for i in idx], [groups[i] for i in idx],
                       mask_files=None, image_size=image_size or 128, name=name, split=split, **kwargs)


def _headct_labels(csv: Path) -> tuple[list[int], list[int]]:
    """(ids, labels) of HeadCT's labels.csv (header "id, hemorrhage"); every problem names the file."""
    try:
        table = pd.read_csv(csv, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{csv}: not a readable CSV table ({type(e).__name__}: {e}); expected a header "
                         "'id, hemorrhage' and one row per image") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if not {"id", "hemorrhage"} <= set(table.columns):
        raise ValueError(f"{csv}: expected columns 'id, hemorrhage', got {list(table.columns)}")
    ids, labels = [], []
    for row, (i, v) in enumerate(zip(table["id"].str.strip(), table["hemorrhage"].str.strip()), start=1):
        if not i.isdecimal() or v not in ("0", "1"):
            raise ValueError(f"{csv}, data row {row}: expected an image number and hemorrhage 0 or 1, "
                             f"got id={i!r}, hemorrhage={v!r}")
        ids.append(int(i))
        labels.append(int(v))
    if not ids:
        raise ValueError(f"{csv}: no rows under the header 'id, hemorrhage'; expected one row per image")
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"{csv}: id(s) {repeated} listed more than once; each image needs exactly one label")
    return ids, labels


def build_headct(root: str | Path | None, *, split: str, seed: int, image_size: int | None,
                 n_test_normal: int = 10, **kwargs) -> FileDataset:
    base = locate("headct", root, "labels.csv")
    ids, labels = _headct_labels(base / "labels.csv")
    by_id = {int(p.stem): p for p in _folder("headct", base / "images") if p.stem.isdecimal()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        expected = base / "images" / f"{missing[0]:03d}.png"
        raise not_found("headct", expected, f"{base / 'labels.csv'} lists id(s) {missing[:5]} without an image "
                        f"in {base / 'images'} (e.g. {expected} is missing).")
    files = [by_id[i] for i in ids]
    groups = ["hemorrhage" if v else "normal" for v in labels]
    return _seeded("headct", files, labels, groups, split=split, seed=seed, n_test_normal=n_test_normal,
                   image_size=image_size, **kwargs)


def build_brainmri(root: str | Path | None, *, split: str, seed: int, image_size: int | None,
                   n_test_normal: int = 10, **kwargs) -> FileDataset:
    base = locate("brainmri", root, "no")
    normal, tumour = _folder("brainmri", base / "no"), _folder("brainmri", base / "yes")
    labels = [0] * len(normal) + [1] * len(tumour)
    groups = ["no"] * len(normal) + ["yes"] * len(tumour)
    return _seeded("brainmri", normal + tumour, labels, groups, split=split, seed=seed,
                   n_test_normal=n_test_normal, image_size=image_size, **kwargs)
