"""Where the source's VGG-16 weights come from, and what a weights file is.

"imagenet" means $MKDLIB_VGG16_WEIGHTS where set, else torchvision's IMAGENET1K_V1 file from torch.hub's
cache (or a download), accepted only once its SHA-256 matches the prefix its name carries. Every file is
read tensors-only (weights_only) and checked by key and shape against VGG-16's features. A run records
the file and its SHA-256; `describe_weights` names the files we know (torchvision's, and the original
release rescaled, which the published numbers used: see the README).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VGG16_Weights

from mkdlib.io_utils import file_sha256

WEIGHTS_ENV = "MKDLIB_VGG16_WEIGHTS"
TORCHVISION_URL = VGG16_Weights.IMAGENET1K_V1.url  # the file name carries its SHA-256 prefix

# Weights files recognised by SHA-256: the full digest, or the 8-hex prefix torchvision puts in its file names.
KNOWN_WEIGHTS = {
    "ec8092bca32d74687081713fb2a183a098d6b5b5e0c58184513c2a77fc310942":
        "the original VGG-16 release (Simonyan & Zisserman, Oxford/Caffe weights via Keras) rescaled to "
        "torchvision's activation units, not torchvision's file",
    "397923af": "torchvision's vgg16-397923af.pth (VGG16_Weights.IMAGENET1K_V1), the paper's authors' source",
}


def _state_dict_from_file(path: Path) -> dict[str, Tensor]:
    """A state dict for `vgg16().features` from a file holding it or a whole `vgg16()` one. Only tensors
    are unpickled (weights_only), so a planted pickle cannot run code; its keys are checked on loading."""
    if not path.is_file():
        raise FileNotFoundError(f"VGG-16 weights file not found: {path}; pass --weights FILE with its location on "
                                "this machine (a run records the path it was trained with)")
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


def load_features(features: nn.Sequential, path: Path) -> None:
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


def imagenet_weights() -> tuple[Path, str]:
    """The ImageNet weights file and how to record it: $MKDLIB_VGG16_WEIGHTS as given, else torchvision's."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser(), env
    path = _torchvision_file()
    return path, str(path)
