"""download_mvtec: checksum first, safe all-or-nothing extraction, local file or URL."""

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from mkdlib.datasets import ArchiveError, DatasetNotFoundError, download_mvtec


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


GOOD = {"bottle/train/good/000.png": b"png", "readme.txt": b"hello"}


def test_extracts_a_verified_archive(tmp_path):
    sha = _tar(tmp_path / "a.tar.xz", GOOD)
    root = download_mvtec(tmp_path / "data", archive=tmp_path / "a.tar.xz", sha256=sha)
    assert (root / "bottle" / "train" / "good" / "000.png").read_bytes() == b"png"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_wrong_checksum_extracts_nothing(tmp_path):
    _tar(tmp_path / "a.tar.xz", GOOD)
    with pytest.raises(ArchiveError, match="cf4313b1"):  # the official hash is the default
        download_mvtec(tmp_path / "data", archive=tmp_path / "a.tar.xz")
    assert not (tmp_path / "data" / "bottle").exists()


@pytest.mark.parametrize("members,links", [
    ({"bottle/x.png": b"ok", "../evil.txt": b"x"}, None),
    ({"/tmp/mkdlib_evil_abs.txt": b"x"}, None),
    ({"bottle/x.png": b"ok"}, {"bottle/link": "../../outside"}),
])
def test_unsafe_members_are_refused(tmp_path, members, links):
    sha = _tar(tmp_path / "a.tar.xz", members, links)
    with pytest.raises(ArchiveError, match="refusing"):
        download_mvtec(tmp_path / "data", archive=tmp_path / "a.tar.xz", sha256=sha)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/mkdlib_evil_abs.txt").exists()
    assert not (tmp_path / "data" / "bottle").exists()


def test_from_url_and_without_any_source(tmp_path):
    sha = _tar(tmp_path / "a.tar.xz", GOOD)
    root = download_mvtec(tmp_path / "data", url=(tmp_path / "a.tar.xz").as_uri(), sha256=sha)
    assert (root / "mvtec_anomaly_detection.tar.xz").is_file() and (root / "bottle").is_dir()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)mvtec_anomaly_detection\.tar\.xz.*mvtec\.com"):
        download_mvtec(tmp_path / "other")


def test_incomplete_category_is_replaced_by_the_archives(tmp_path):
    members = {"bottle/train/good/000.png": b"png0", "bottle/train/good/001.png": b"png1",
               "cable/train/good/000.png": b"cable"}
    sha = _tar(tmp_path / "a.tar.xz", members)
    data = tmp_path / "data"
    (data / "bottle" / "train" / "good").mkdir(parents=True)  # an earlier, interrupted copy:
    (data / "bottle" / "train" / "good" / "000.png").write_bytes(b"pn")  # one file truncated, one missing
    (data / "cable" / "train" / "good").mkdir(parents=True)  # a complete copy, with a file of the user's
    (data / "cable" / "train" / "good" / "000.png").write_bytes(b"cable")
    (data / "cable" / "notes.txt").write_text("mine")
    download_mvtec(data, archive=tmp_path / "a.tar.xz", sha256=sha)
    assert sorted(p.name for p in (data / "bottle" / "train" / "good").iterdir()) == ["000.png", "001.png"]
    assert (data / "bottle" / "train" / "good" / "000.png").read_bytes() == b"png0"
    assert (data / "cable" / "notes.txt").read_text() == "mine"  # complete: kept as it is
    assert not [p for p in data.iterdir() if p.name.startswith(".")]


def test_stale_extraction_folders_of_dead_processes_are_removed(tmp_path):
    sha = _tar(tmp_path / "a.tar.xz", GOOD)
    data = tmp_path / "data"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process of ours that has exited: its pid names no running process
    host = socket.gethostname()
    killed = data / f".extract-{host}-{dead.pid}-abcd1234"  # left by a `kill -9` mid-extraction
    running = data / f".extract-{host}-{os.getpid()}-abcd1234"  # a live extraction: left alone
    old, recent = data / ".extract-k2j4h5g6", data / ".extract-othername"  # without host and pid: by age
    for folder in (killed, running, old, recent):
        (folder / "bottle").mkdir(parents=True)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    download_mvtec(data, archive=tmp_path / "a.tar.xz", sha256=sha)
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".")) == sorted([running.name, recent.name])


def test_a_same_size_corrupted_file_is_replaced_by_the_archives(tmp_path):
    members = {"bottle/train/good/000.png": b"png0", "bottle/train/good/001.png": b"png1"}
    sha = _tar(tmp_path / "a.tar.xz", members)
    good = tmp_path / "data" / "bottle" / "train" / "good"
    good.mkdir(parents=True)
    (good / "000.png").write_bytes(b"png0")
    (good / "001.png").write_bytes(b"pnX1")  # every file there, at its size, but one byte flipped
    download_mvtec(tmp_path / "data", archive=tmp_path / "a.tar.xz", sha256=sha)
    assert (good / "001.png").read_bytes() == b"png1" and (good / "000.png").read_bytes() == b"png0"
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]
