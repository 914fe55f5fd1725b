"""Files: atomic writes (every file mkdlib writes goes through here: temporary file + rename), the
SHA-256 of a file (weights and archives are checked by it), and the git commit of a checkout (runs and
the results index record it)."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):  # the old file is left as it was
            raise OSError(err.errno, f"no space left on the device writing {path} ({len(data)} bytes); free "
                          "space or choose another results folder, then run the same command again") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, computed once per (path, size, modification time) in a process."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(where: str | Path) -> tuple[str | None, bool]:
    """(HEAD's SHA, whether tracked files have uncommitted changes) of the git checkout holding `where`;
    (None, False) outside a checkout, before the first commit, or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        return sha, bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False


def shown(path: str | Path) -> str:
    """`path` as messages and tables show it: relative to the working folder when it lies in it or beside
    it (a notebook runs in notebooks/, its runs in ../results/runs), so that executed notebooks and the
    tables they write carry no machine path; absolute otherwise."""
    relative = os.path.relpath(Path(path).resolve(), Path.cwd())
    return relative if not relative.startswith(os.pardir + os.sep + os.pardir) else str(Path(path).resolve())
