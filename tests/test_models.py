import hashlib

import pytest
import torch
from torchvision.models import vgg16

from mkdlib.models import POOLS, Cloner, Source, n_parameters
from mkdlib.weights import KNOWN_WEIGHTS, describe_weights, weights_sha256


def test_cloner_parameter_counts():
    assert n_parameters(Cloner()) == 343_984  # reference: smaller cloner
    assert n_parameters(Cloner("equal")) == 14_715_968  # reference: VGG-16 widths, no biases, BN


def test_cloner_is_bias_free_and_matches_source_shapes():
    cloner, source = Cloner(layers=POOLS), Source(POOLS, weights=None)
    assert all(m.bias is None for m in cloner.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.rand(2, 3, 64, 64)
    c, s = cloner(x), source(x)
    assert list(c) == list(s) == list(POOLS)
    assert all(c[k].shape == s[k].shape for k in POOLS[1:])
    assert c["pool1"].shape[1] == 16  # the small cloner matches the source from pool2 on only
    equal = Cloner("equal", layers=POOLS)(x)
    assert all(equal[k].shape == s[k].shape for k in POOLS)


def test_source_taps_equal_vgg16_feature_slices():
    torch.manual_seed(0)
    features = vgg16(weights=None).features.eval()
    source = Source(weights=None)
    source.net.body.load_state_dict(features[:31].state_dict())
    x = torch.rand(2, 3, 64, 64)
    out = source(x)
    with torch.no_grad():  # outputs of features[9], [16], [23], [30], as the reference taps them
        for name, end in {"pool2": 10, "pool3": 17, "pool4": 24, "pool5": 31}.items():
            torch.testing.assert_close(out[name], features[:end](x))


def test_source_is_frozen_and_stays_in_eval_mode():
    source = Source(weights=None)
    source.train()
    assert not source.training
    assert all(not p.requires_grad for p in source.parameters())


def test_source_computes_only_up_to_the_deepest_tap():
    assert len(Source(["pool2"], weights=None).net.body) == 10


def test_unknown_layer_lists_valid_ones():
    with pytest.raises(ValueError, match="pool1"):
        Source(["conv5"], weights=None)
    with pytest.raises(ValueError, match="small"):
        Cloner("tiny")


@pytest.mark.parametrize("whole", [False, True])
def test_weights_file_for_features_or_whole_vgg(tmp_path, monkeypatch, whole):
    torch.manual_seed(1)
    net = vgg16(weights=None)
    state = net.state_dict() if whole else net.features.state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    monkeypatch.setenv("MKDLIB_VGG16_WEIGHTS", str(path))
    source = Source()  # "imagenet" resolves the environment variable
    assert source.weights == str(path)
    assert weights_sha256(source.weights) == hashlib.sha256(path.read_bytes()).hexdigest()  # recorded with every run
    torch.testing.assert_close(source.net.body[0].weight, net.features[0].weight)
    torch.testing.assert_close(Source(weights=path).net.body[28].bias, net.features[28].bias)


def test_weights_described_by_name_digest_and_what_they_are():
    original = next(k for k in KNOWN_WEIGHTS if len(k) == 64)
    text = describe_weights("/data/w/vgg16_features.pth", original)
    assert text.startswith(f"vgg16_features.pth (sha256 {original[:12]}): the original VGG-16 release")
    assert "not torchvision's file" in text
    assert "torchvision's vgg16-397923af.pth" in describe_weights("/x/vgg16-397923af.pth", "397923af" + "0" * 56)
    assert describe_weights("/x/mine.pth", "ab" * 32) == f"mine.pth (sha256 {'ab' * 6})"  # unknown file
    assert describe_weights("torchvision VGG16_Weights.IMAGENET1K_V1", None) == "torchvision VGG16_Weights.IMAGENET1K_V1"
    assert weights_sha256(Source(weights=None).weights) is None


def test_bad_weights_file_names_it(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        Source(weights=bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Source(weights=tmp_path / "missing.pth")


def test_offline_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.delenv("MKDLIB_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch.hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="MKDLIB_VGG16_WEIGHTS"):
        Source()
