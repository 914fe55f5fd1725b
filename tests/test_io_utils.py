"""io_utils: atomic writes leave the old file intact and name the path when the disk is full."""
import errno
import os

import pytest

from mkdlib import io_utils


def test_disk_full_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="no space left.*metrics.json") as err:
        io_utils.atomic_write_text(target, "new")
    assert err.value.errno == errno.ENOSPC and "another results folder" in str(err.value)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]  # no temporary file left
