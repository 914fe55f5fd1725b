"""Weights files are trusted only after checks: torchvision's cached file by its hash, every file through
a tensors-only load, and its keys and shapes against VGG-16's (issue 11, points 5 and 9)."""

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg11

from mkdlib import models, weights
from mkdlib.models import Source


class _Planted:
    """Unpickling this object writes `marker`: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache under a temporary $TORCH_HOME, no $MKDLIB_VGG16_WEIGHTS, no network."""
    def no_network(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MKDLIB_VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _features_file(path: Path) -> tuple[Path, dict]:
    """A valid VGG-16 features state dict saved at `path`."""
    torch.manual_seed(0)
    state = models.vgg16_features().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def _named_by_its_hash(hub: Path, monkeypatch, path: Path) -> Path:
    """Make torchvision's expected file name carry `path`'s own SHA-256 prefix, as the real one does."""
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    monkeypatch.setattr(weights, "TORCHVISION_URL", f"https://download.pytorch.org/models/vgg16-{prefix}.pth")
    return hub / f"vgg16-{prefix}.pth"


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_planted_pickle_in_the_hub_cache_is_refused_unread(hub, tmp_path, container):
    marker = tmp_path / "marker.txt"
    planted = hub / "vgg16-397923af.pth"  # torchvision's file name, under $TORCH_HOME/hub/checkpoints
    planted.parent.mkdir(parents=True)
    if container == "pickle":
        planted.write_bytes(pickle.dumps(_Planted(marker), protocol=2))
    else:
        torch.save({"0.weight": _Planted(marker)}, planted)
    with pytest.raises(ValueError, match=r"vgg16-397923af\.pth failed its hash check.*not torchvision's"):
        Source()
    assert not marker.exists()


def test_cached_file_with_the_right_hash_is_loaded(hub, tmp_path, monkeypatch):
    path, state = _features_file(tmp_path / "features.pth")
    cached = _named_by_its_hash(hub, monkeypatch, path)
    cached.parent.mkdir(parents=True)
    path.rename(cached)
    source = Source()
    assert source.weights == str(cached)  # recorded as a file, so runs carry its SHA-256
    torch.testing.assert_close(source.net.body[0].weight, state["0.weight"])


def test_download_is_hash_checked_then_loaded(hub, tmp_path, monkeypatch):
    path, state = _features_file(tmp_path / "features.pth")
    cached = _named_by_its_hash(hub, monkeypatch, path)
    asked = {}

    def fake_download(url, dst, hash_prefix=None, progress=True):
        asked.update(url=url, hash_prefix=hash_prefix)
        Path(dst).write_bytes(path.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    source = Source()
    assert asked == {"url": weights.TORCHVISION_URL, "hash_prefix": cached.name[6:14]}
    assert source.weights == str(cached)
    torch.testing.assert_close(source.net.body[28].bias, state["28.bias"])


def test_planted_pickle_given_as_a_file_is_not_a_weights_file(tmp_path, monkeypatch):
    marker, planted = tmp_path / "marker.txt", tmp_path / "planted.pth"
    planted.write_bytes(pickle.dumps(_Planted(marker), protocol=2))
    monkeypatch.setenv("MKDLIB_VGG16_WEIGHTS", str(planted))
    with pytest.raises(ValueError, match=r"planted\.pth is not a weights file"):
        Source()
    assert not marker.exists()


def test_text_file_named_pth_is_not_a_weights_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"notes\.pth is not a weights file.*vgg16\(\)\.features"):
        Source(weights=text)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth holds a list, not a state dict"):
        Source(weights=tmp_path / "list.pth")


def test_vgg11_weights_are_refused_naming_the_file(tmp_path):
    torch.save(vgg11(weights=None).features.state_dict(), tmp_path / "vgg11.pth")
    with pytest.raises(ValueError, match=r"(?s)vgg11\.pth does not hold VGG-16 weights.*missing keys.*VGG-11"):
        Source(weights=tmp_path / "vgg11.pth")


def test_wrong_shapes_and_missing_keys_are_named(tmp_path):
    path, state = _features_file(tmp_path / "w.pth")
    state["0.weight"] = torch.zeros(32, 3, 3, 3)
    del state["28.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"w\.pth does not hold VGG-16 weights \(missing keys: 28\.bias; "
                                         r"wrong shapes: 0\.weight \(32, 3, 3, 3\) \(expected \(64, 3, 3, 3\)\)\)"):
        Source(weights=path)
