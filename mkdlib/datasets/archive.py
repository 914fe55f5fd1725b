"""Fetch, verify and safely unpack the MVTec AD archive (paper Sec. 4; README_DATA.md).

The archive is checked against its published SHA-256 before anything is extracted; extraction refuses
absolute paths, `..`, links leaving the tree and special files, and lands all-or-nothing.
"""

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm.auto import tqdm

from .errors import ArchiveError
from .roots import not_found

MVTEC_ARCHIVE = "mvtec_anomaly_detection.tar.xz"
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"


# the stdlib's own checks (Python >= 3.11.4, 3.10.12), as a second guard
_STDLIB_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path) -> Path:
    """Stream `url` to `dest` (via `dest.part`, renamed when complete)."""
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=total is None) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
    part.replace(dest)
    return dest


def _unsafe(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or PureWindowsPath(name).drive != "" or ".." in parts


def _check(member: tarfile.TarInfo, archive: Path) -> None:
    if _unsafe(member.name):
        raise ArchiveError(f"refusing unsafe member {member.name!r} (absolute path or '..') in {archive}")
    if member.issym() or member.islnk():
        if _unsafe(member.linkname):
            raise ArchiveError(f"refusing link {member.name!r} -> {member.linkname!r} in {archive}")
    elif not (member.isfile() or member.isdir()):
        raise ArchiveError(f"refusing special file {member.name!r} in {archive}")


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract a tar archive into `dest`; returns its top-level entries. Existing entries are kept."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
        with tarfile.open(archive) as tar:
            for member in tar:  # one pass: xz cannot seek back cheaply
                _check(member, archive)
                tar.extract(member, tmp, **_STDLIB_FILTER)
        top = []
        for entry in sorted(Path(tmp).iterdir()):
            target = dest / entry.name
            if not target.exists():
                shutil.move(str(entry), target)
            top.append(target)
    return top


def download_mvtec(root: str | Path, archive: str | Path | None = None, url: str | None = None, *,
                   sha256: str = MVTEC_SHA256) -> Path:
    """Verify and unpack MVTec AD into `root` (giving `root/<category>/...`); returns `root`.

    `archive`: a copy the user already has; `url`: where to fetch it (needs internet). With neither,
    `root/mvtec_anomaly_detection.tar.xz` is used if present. `sha256` is for tests only.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    default = root / MVTEC_ARCHIVE
    if archive is None and url is None and not default.is_file():
        raise not_found("mvtec", default, f"no MVTec archive given and {default} is missing.")
    if archive is None:
        archive = default
        if url is not None and not (default.is_file() and sha256_of(default) == sha256):
            fetch(url, default)
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise not_found("mvtec", archive, f"MVTec archive not found: {archive}.")
    actual = sha256_of(archive)
    if actual != sha256:
        raise ArchiveError(f"{archive}: SHA-256 is {actual}, expected {sha256}: the file is incomplete or "
                           f"not the official {MVTEC_ARCHIVE}; download it again")
    safe_extract(archive, root)
    return root
