"""Source and cloner networks (paper sec. 3.1-3.2, Fig. 2).

The source S is ImageNet VGG-16's convolutional part, frozen; the cloner C is a thinner VGG with no
biases. Both return the activations at named critical points ("pool1".."pool5"), and never compute
a loss. Layer names are the only way layers are referred to in mkdlib.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs as VGG_CFGS
from torchvision.models.vgg import make_layers

from mkdlib.io_utils import file_sha256

# Index of each max-pool in torchvision's `vgg16().features`; the reference taps the outputs of
# features[9], [16], [23], [30] (pool2..pool5). Shapes at 128 px: pool2 (128,32,32), pool3 (256,16,16),
# pool4 (512,8,8), pool5 (512,4,4).
VGG16_POOL_INDEX = {"pool1": 4, "pool2": 9, "pool3": 16, "pool4": 23, "pool5": 30}
POOLS = tuple(VGG16_POOL_INDEX)
TRAIN_LAYERS = ("pool2", "pool3", "pool4", "pool5")  # reference: all four critical points in training
SCORE_LAYERS = ("pool3", "pool4", "pool5")  # reference: pool2 is dropped at test time

WEIGHTS_ENV = "MKDLIB_VGG16_WEIGHTS"
TORCHVISION_URL = VGG16_Weights.IMAGENET1K_V1.url  # the file name carries its SHA-256 prefix

# Weights files recognised by SHA-256: the full digest, or the 8-hex prefix torchvision puts in its file names.
KNOWN_WEIGHTS = {
    "ec8092bca32d74687081713fb2a183a098d6b5b5e0c58184513c2a77fc310942":
        "the original VGG-16 release (Simonyan & Zisserman, Oxford/Caffe weights via Keras) rescaled to "
        "torchvision's activation units, not torchvision's file",
    "397923af": "torchvision's vgg16-397923af.pth (VGG16_Weights.IMAGENET1K_V1), the paper's authors' source",
}

# Cloner architectures as data ("M" = 2x2 max-pool), after torchvision's vgg.py `cfgs`.
# "small" is the reference's default cloner: the widths before each pool equal the source's, so
# the taps have the source's shapes without adapters. "equal" is VGG-16 itself (Fig. 4 ablation).
CLONER_CFGS: dict[str, list[int | str]] = {
    "small": [16, 16, "M", 16, 128, "M", 16, 16, 256, "M", 16, 16, 512, "M", 16, 16, 512, "M"],
    "equal": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    layers = tuple(layers)
    bad = [name for name in layers if name not in VGG16_POOL_INDEX]
    if bad or not layers:
        raise ValueError(f"unknown layer(s) {bad or layers}; valid layers are {list(POOLS)}")
    return tuple(sorted(set(layers), key=POOLS.index))


class _Tapped(nn.Module):
    """Runs a sequential stack and returns the outputs of the modules at the given indices."""

    def __init__(self, body: nn.Sequential, taps: dict[int, str]):
        super().__init__()
        self.body = body[: max(taps) + 1]  # nothing past the deepest tap is computed
        self.taps = taps

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, module in enumerate(self.body):
            x = module(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out


def _state_dict_from_file(path: Path) -> dict[str, Tensor]:
    """A state dict for `vgg16().features` from a file holding it or a whole `vgg16()` one. Only tensors
    are unpickled (weights_only), so a planted pickle cannot run code; its keys are checked on loading."""
    if not path.is_file():
        raise FileNotFoundError(f"VGG-16 weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # text, truncated zip, arbitrary pickles: KeyError, EOFError, UnpicklingError ...
        raise ValueError(
            f"{path} is not a weights file that torch.load(weights_only=True) can read "
            f"({type(err).__name__}): expected a state dict of torchvision's vgg16().features or vgg16() "
            "saved with torch.save"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict for torchvision's "
                         "vgg16().features or vgg16() (expected keys '0.weight', ... or 'features.0.weight', ...)")
    whole = [k for k in state if isinstance(k, str) and k.startswith("features.")]  # a whole vgg16()
    if whole:
        state = {k[len("features."):]: state[k] for k in whole}
    return state


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _load_features(features: nn.Sequential, path: Path) -> None:
    """Load the weights file `path` into `features`; weights of another network (VGG-11, vgg16_bn, a
    cloner) are refused by name and shape, naming the file, rather than by torch's bare RuntimeError."""
    state, expected = _state_dict_from_file(path), features.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__} "
             f"(expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and not (torch.is_tensor(state[k]) and state[k].shape == v.shape)]
    problems = [f"{what}: {_first(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise ValueError(f"{path} does not hold VGG-16 weights ({'; '.join(problems)}): expected a state dict "
                         "of torchvision's vgg16().features (13 convolutions, keys '0.weight' ... '28.bias') "
                         "or of a whole vgg16(), not of another network such as VGG-11 or vgg16_bn")
    features.load_state_dict(state)


def weights_sha256(recorded: str | None) -> str | None:
    """The SHA-256 of the weights a Source recorded (`Source.weights`) where that is a file, else None."""
    path = None if recorded is None else Path(recorded).expanduser()
    return file_sha256(path) if path is not None and path.is_file() else None


def describe_weights(recorded: str, sha256: str | None) -> str:
    """Source weights for a report: a file as its name, digest and, where KNOWN_WEIGHTS has it, what it
    is; anything else (e.g. "torchvision VGG16_Weights.IMAGENET1K_V1") as recorded."""
    if not sha256:
        return recorded
    known = next((label for key, label in KNOWN_WEIGHTS.items() if sha256.startswith(key)), None)
    return f"{Path(recorded).name} (sha256 {sha256[:12]}" + (f"): {known}" if known else ")")


def _torchvision_checkpoint() -> tuple[Path, str]:
    """Where torch.hub caches torchvision's VGG-16 file (`$TORCH_HOME` respected), and the SHA-256 prefix
    its name carries (vgg16-397923af.pth: the digest starts with 397923af), which torch.hub never checks."""
    name = Path(urllib.parse.urlparse(TORCHVISION_URL).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name, re.search(r"-([0-9a-f]+)\.", name).group(1)


def _offline_error(cached: Path, err: Exception) -> RuntimeError:
    return RuntimeError(
        "ImageNet VGG-16 weights are not available offline and could not be downloaded "
        f"({type(err).__name__}: {err}). Provide them with Source(weights='/path/to/file.pth') or "
        f"the environment variable {WEIGHTS_ENV}=/path/to/file.pth: a state dict for "
        "torchvision.models.vgg16().features or vgg16(), e.g. torchvision's vgg16-397923af.pth "
        f"copied to {cached}."
    )


def _torchvision_file() -> Path:
    """torchvision's IMAGENET1K_V1 file from torch.hub's cache, else downloaded; either way only once its
    SHA-256 matches the prefix in its name, so a file planted in the cache is refused, never unpickled."""
    path, prefix = _torchvision_checkpoint()
    if not path.is_file():
        try:  # written under a temporary name, moved into the cache only if the hash matches
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(TORCHVISION_URL, str(path), hash_prefix=prefix, progress=False)
        except Exception as err:
            raise _offline_error(path, err) from None
    sha = file_sha256(path)
    if not sha.startswith(prefix):
        raise ValueError(f"{path} failed its hash check (SHA-256 {sha[:16]}..., its name promises {prefix}...): "
                         f"it is not torchvision's VGG-16 weights file; delete it, or set {WEIGHTS_ENV} to a "
                         "weights file you trust")
    return path


def _imagenet_weights() -> tuple[Path, str]:
    """The ImageNet weights file and how to record it: $MKDLIB_VGG16_WEIGHTS as given, else torchvision's."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser(), env
    path = _torchvision_file()
    return path, str(path)


def _vgg16_features() -> nn.Sequential:
    """`vgg16().features` with torchvision's init, without building its 120M-parameter classifier."""
    features = make_layers(VGG_CFGS["D"], batch_norm=False)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


class Source(nn.Module):
    """Frozen VGG-16 features returning the named pool taps.

    weights: "imagenet" ($MKDLIB_VGG16_WEIGHTS, else torchvision's IMAGENET1K_V1 from torch.hub's cache
    or a download, hash-checked either way), a path to a state dict, or None (random init: tests and
    the no-pretraining ablation).
    """

    def __init__(self, layers: Sequence[str] = TRAIN_LAYERS, *, weights: str | Path | None = "imagenet"):
        super().__init__()
        self.layers = check_layers(layers)
        features = _vgg16_features()
        self.weights = None  # where the weights came from, for reports
        if weights is not None:
            path, self.weights = _imagenet_weights() if weights == "imagenet" else \
                (Path(weights).expanduser(), str(weights))
            _load_features(features, path)
        self.net = _Tapped(features, {VGG16_POOL_INDEX[name]: name for name in self.layers})
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Source:  # always in eval mode
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.net(x)


def make_cloner_layers(cfg: Sequence[int | str]) -> tuple[nn.Sequential, dict[int, str]]:
    """Bias-free 3x3 convs; BN + ReLU after a conv, except ReLU only after the conv feeding a pool."""
    modules: list[nn.Module] = []
    taps: dict[int, str] = {}
    in_ch = 3
    for i, item in enumerate(cfg):
        if item == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            taps[len(modules) - 1] = f"pool{len(taps) + 1}"
            continue
        modules.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1, bias=False))
        if i + 1 < len(cfg) and cfg[i + 1] != "M":
            modules.append(nn.BatchNorm2d(int(item)))
        modules.append(nn.ReLU())  # not in-place: guided backprop hooks these
        in_ch = int(item)
    return nn.Sequential(*modules), taps


class Cloner(nn.Module):
    """The trainable cloner C; returns the same named taps as `Source`, with the same shapes."""

    def __init__(self, cfg: str | Sequence[int | str] = "small", layers: Sequence[str] = TRAIN_LAYERS):
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in CLONER_CFGS:
                raise ValueError(f"unknown cloner config {cfg!r}; valid: {list(CLONER_CFGS)}")
            cfg = CLONER_CFGS[cfg]
        self.layers = check_layers(layers)
        body, taps = make_cloner_layers(cfg)
        wanted = {i: name for i, name in taps.items() if name in self.layers}
        self.net = _Tapped(body, wanted)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)  # reference: Xavier-uniform, BN left at defaults

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.net(x)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
