"""Fetch, verify and safely unpack the MVTec AD archive (paper Sec. 4; README_DATA.md).

The archive is checked against its published SHA-256 before anything is extracted; extraction refuses
absolute paths, `..`, links leaving the tree and special files, and lands all-or-nothing: a category
already on disk is kept only if it has every file of the archive's with the same bytes (a same-size
corrupted file is caught), else replaced whole, and temporary folders of a killed extraction are removed
at the next call.
"""

import filecmp
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm.auto import tqdm

from mkdlib.io_utils import file_sha256

from .errors import ArchiveError
from .roots import not_found

MVTEC_ARCHIVE = "mvtec_anomaly_detection.tar.xz"
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
STALE_AFTER_S = 24 * 3600  # a `.extract-*` folder untouched this long is abandoned, whoever made it


# the stdlib's own checks (Python >= 3.11.4, 3.10.12), as a second guard
_STDLIB_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


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


def _stale(folder: Path, now: float) -> bool:
    """A temporary `.extract-<host>-<pid>-*` folder left by a process that is gone; where that cannot be told
    here (another host's folder, an older name without host and pid, not a POSIX system): untouched for a day."""
    match = re.fullmatch(r"\.extract-(.+)-(\d+)-[^-]+", folder.name)
    if not match or match[1] != socket.gethostname() or os.name != "posix":
        return now - folder.stat().st_mtime > STALE_AFTER_S
    try:
        os.kill(int(match[2]), 0)  # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        pass
    return False


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract a tar archive into `dest`; returns its top-level entries. An existing entry is kept when it
    already has every file of the archive's copy with the same bytes, else replaced whole by the archive's."""
    dest.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for folder in dest.glob(".extract-*"):  # left by an extraction that was killed (kill -9, power loss)
        if folder.is_dir() and _stale(folder, now):
            shutil.rmtree(folder, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{socket.gethostname()}-{os.getpid()}-", dir=dest))
    new = tmp / "new"
    try:
        files: dict[str, list[str]] = {}  # top-level entry -> its member files' names
        with tarfile.open(archive) as tar:
            for member in tar:  # one pass: xz cannot seek back cheaply
                _check(member, archive)
                tar.extract(member, new, **_STDLIB_FILTER)
                if member.isfile():
                    files.setdefault(PurePosixPath(member.name.replace("\\", "/")).parts[0], []).append(member.name)
        (tmp / "old").mkdir()
        top = []
        for entry in sorted(new.iterdir()):
            target = dest / entry.name
            kept = target.exists() and all((dest / n).is_file() and filecmp.cmp(dest / n, new / n, shallow=False)
                                           for n in files.get(entry.name, []))
            if not kept:  # by renames, so readers see the old or the new copy, never a half-written one
                if target.exists() or target.is_symlink():
                    target.rename(tmp / "old" / target.name)  # same file system
                entry.rename(target)
            top.append(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
        if url is not None and not (default.is_file() and file_sha256(default) == sha256):
            fetch(url, default)
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise not_found("mvtec", archive, f"MVTec archive not found: {archive}.")
    actual = file_sha256(archive)
    if actual != sha256:
        raise ArchiveError(f"{archive}: SHA-256 is {actual}, expected {sha256}: the file is incomplete or "
                           f"not the official {MVTEC_ARCHIVE}; download it again")
    safe_extract(archive, root)
    return root
