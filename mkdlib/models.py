"""Source and cloner networks (paper sec. 3.1-3.2, Fig. 2).

The source S is ImageNet VGG-16's convolutional part, frozen; the cloner C is a thinner VGG with no
biases. Both return the activations at named critical points ("pool1".."pool5"), and never compute
a loss. Layer names are the only way layers are referred to in mkdlib.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from torch import Tensor, nn
from torchvision.models.vgg import cfgs as VGG_CFGS
from torchvision.models.vgg import make_layers

from mkdlib.weights import imagenet_weights, load_features

# Index of each max-pool in torchvision's `vgg16().features`; the reference taps the outputs of
# features[9], [16], [23], [30] (pool2..pool5). Shapes at 128 px: pool2 (128,32,32), pool3 (256,16,16),
# pool4 (512,8,8), pool5 (512,4,4).
VGG16_POOL_INDEX = {"pool1": 4, "pool2": 9, "pool3": 16, "pool4": 23, "pool5": 30}
POOLS = tuple(VGG16_POOL_INDEX)
TRAIN_LAYERS = ("pool2", "pool3", "pool4", "pool5")  # reference: all four critical points in training
SCORE_LAYERS = ("pool3", "pool4", "pool5")  # reference: pool2 is dropped at test time

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


def vgg16_features() -> nn.Sequential:
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
        features = vgg16_features()
        self.weights = None  # where the weights came from, for reports
        if weights is not None:
            path, self.weights = imagenet_weights() if weights == "imagenet" else \
                (Path(weights).expanduser(), str(weights))
            load_features(features, path)
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
        # In place, as torchvision's VGG: ~15% faster training steps on CPU (docs/speed.md); guided backprop
        # turns it off while its hooks are on (localization._GuidedReLUs).
        modules.append(nn.ReLU(inplace=True))
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


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode inside the block, its mode restored after: scoring and localisation use the
    BN running statistics, so images in a batch do not mix (paper sec. 3.3, per image)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
