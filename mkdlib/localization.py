"""Anomaly localisation by gradients of the scoring loss (paper Eqs. 5-6, sec. 3.3.4, Tables 1/11).

Vanilla gradients, SmoothGrad (the released code's noise level and the standard one) and guided
backprop through the cloner's ReLUs. Each map comes from one batched backward pass: in eval mode
images don't interact, so d(sum_b loss_b)/dx_b = d(loss_b)/dx_b, the released code's per-image loop.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from mkdlib import postprocess
from mkdlib.models import eval_mode

GRADIENTS = "gradients"
SMOOTHGRAD = "smoothgrad"  # standard SmoothGrad: noise std = sigma * (max - min)
SMOOTHGRAD_REFERENCE = "smoothgrad-reference"  # released code: std = (0.05 / (max - min)) ** 2
GUIDED_BACKPROP = "guided-backprop"
METHODS = (GRADIENTS, SMOOTHGRAD, SMOOTHGRAD_REFERENCE, GUIDED_BACKPROP)

REFERENCE_NOISE = 0.05  # the released code's "param_sigma_multiplier"
PIXELS_PER_CHUNK = 32 * 128 * 128  # 32 images of 128 px per backward pass by default


def default_max_batch(height: int, width: int) -> int:
    """Images per forward/backward pass: 32 at 128 px, scaled inversely with the pixel count."""
    return max(1, PIXELS_PER_CHUNK // (height * width))


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images as a (B, 3, H, W) tensor, got {shape}")
    if len(images) == 0:
        raise ValueError("empty batch of images")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")


def input_gradients(images: Tensor, source: nn.Module, cloner: nn.Module, loss: nn.Module) -> Tensor:
    """(B, 3, H, W) gradient of each image's own loss w.r.t. that image, in one backward pass."""
    with torch.enable_grad():
        # Channels-last: oneDNN's convolutions and max-pools run ~30% faster on CPU (measured).
        x = images.detach().clone(memory_format=torch.channels_last).requires_grad_(True)
        per_image = loss(cloner(x), source(x), reduction="none")  # (B,)
        # autograd.grad w.r.t. x only: no parameter gradients are computed or accumulated.
        (grad,) = torch.autograd.grad(per_image.sum(), x)
    return grad


def _grey(grads: Tensor) -> np.ndarray:
    """(B, 3, H, W) tensor -> (B, H, W) float64 numpy grey map."""
    return postprocess.grey(grads.detach().to("cpu", torch.float64).numpy())


def _chunked_grey(images: Tensor, source: nn.Module, cloner: nn.Module, loss: nn.Module, max_batch: int) -> np.ndarray:
    """(B, H, W) grey gradient maps, `max_batch` images per backward pass."""
    return np.concatenate([_grey(input_gradients(chunk, source, cloner, loss)) for chunk in images.split(max_batch)])


def _noisy_copies(images: Tensor, n: int, std: Tensor, generator: torch.Generator | None,
                  chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (image index (k,), noisy copies (k, 3, H, W)), k <= chunk, image-major.

    Noise is drawn image by image, so the draws do not depend on the chunk size.
    """
    pending: list[Tensor] = []
    owners: list[Tensor] = []
    count = 0
    for i, image in enumerate(images):
        noise = torch.randn((n, *image.shape), generator=generator, device=image.device, dtype=image.dtype)
        pending.append(image + noise * std[i])
        owners.append(torch.full((n,), i, dtype=torch.long))
        count += n
        while count >= chunk or (i == len(images) - 1 and count > 0):
            copies, idx = torch.cat(pending), torch.cat(owners)
            yield idx[:chunk], copies[:chunk]
            pending, owners = [copies[chunk:]], [idx[chunk:]]
            count = max(count - chunk, 0)


def noise_std(images: Tensor, method: str, sigma: float = 0.15) -> Tensor:
    """(B,) SmoothGrad noise std per image, from its value range (max - min over C, H, W)."""
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).detach()  # (B,)
    if method == SMOOTHGRAD_REFERENCE:
        if (span == 0).any():
            raise ValueError("smoothgrad-reference: a constant image has no value range to scale noise by")
        return (REFERENCE_NOISE / span) ** 2  # released code: 0.0025 for [0, 1] images (a bug)
    if method == SMOOTHGRAD:
        return sigma * span
    raise ValueError(f"no noise for method {method!r}; SmoothGrad methods: {[SMOOTHGRAD, SMOOTHGRAD_REFERENCE]}")


def _smoothgrad(images: Tensor, source: nn.Module, cloner: nn.Module, loss: nn.Module, *, std: Tensor,
                n_samples: int, generator: torch.Generator | None, max_batch: int) -> np.ndarray:
    """Mean over noisy copies of each copy's percentile-normalised grey map (released code)."""
    total = np.zeros((len(images), *images.shape[2:]))  # (B, H, W)
    for idx, copies in _noisy_copies(images, n_samples, std, generator, max_batch):
        maps = postprocess.percentile_normalize(_grey(input_gradients(copies, source, cloner, loss)))
        np.add.at(total, idx.numpy(), maps)
    return total / n_samples


class _GuidedReLUs:
    """Context: the cloner's ReLUs pass back only positive gradients, where their output was > 0."""

    def __init__(self, cloner: nn.Module):
        self.relus = [m for m in cloner.modules() if isinstance(m, nn.ReLU)]
        if not self.relus:
            raise ValueError("guided backprop: the cloner has no nn.ReLU modules to guide")
        self.handles: list = []
        self.inplace: list[bool] = []

    @staticmethod
    def _hook(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
        # grad_input = grad_output * (output > 0) already; keep its positive part only.
        return (grad_input[0].clamp(min=0),)

    def __enter__(self) -> _GuidedReLUs:
        self.inplace = [m.inplace for m in self.relus]
        for m in self.relus:  # a full backward hook cannot see through an in-place op
            m.inplace = False
        self.handles = [m.register_full_backward_hook(self._hook) for m in self.relus]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for m, inplace in zip(self.relus, self.inplace, strict=True):
            m.inplace = inplace


def attribution_maps(images: Tensor, source: nn.Module, cloner: nn.Module, loss: nn.Module, *,
                     method: str = GRADIENTS, n_samples: int = 50, sigma: float = 0.15,
                     generator: torch.Generator | None = None, max_batch: int | None = None) -> Tensor:
    """(B, H, W) raw maps (float32, CPU) for (B, 3, H, W) images: grey |gradient| of each image's loss.

    For the SmoothGrad methods, the mean of the percentile-normalised grey maps of `n_samples`
    noisy copies. `loss` is the score-time loss (pool3..pool5). The cloner is put in eval mode and
    restored; work is split into passes of at most `max_batch` images (or noisy copies).
    """
    if method not in METHODS:
        raise ValueError(f"unknown localisation method {method!r}; valid methods: {list(METHODS)}")
    _check_images(images)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    max_batch = max_batch or default_max_batch(*images.shape[2:])
    with eval_mode(cloner):  # BN must not mix images
        if method == GRADIENTS:
            out = _chunked_grey(images, source, cloner, loss, max_batch)
        elif method == GUIDED_BACKPROP:
            with _GuidedReLUs(cloner):
                out = _chunked_grey(images, source, cloner, loss, max_batch)
        else:
            std = noise_std(images, method, sigma)
            out = _smoothgrad(images, source, cloner, loss, std=std, n_samples=n_samples,
                              generator=generator, max_batch=max_batch)
    return torch.from_numpy(out).float()


def finish_maps(raw: np.ndarray, method: str, *, blur: bool = True, sigma: float | None = None,
                open_maps: bool = False) -> np.ndarray:
    """Raw (B, H, W) maps -> localisation maps in [0, 1], as the released code post-processes them.

    gradients: percentile-99 normalisation, blur. SmoothGrad: (copies already normalised and
    averaged) min-max, blur. Guided backprop: percentile-99 normalisation then min-max, blur.
    Optionally Eq. 6's opening at the end; `blur=False` gives Table 1's "without Gaussian filter".
    """
    if method not in METHODS:
        raise ValueError(f"unknown localisation method {method!r}; valid methods: {list(METHODS)}")
    maps = np.asarray(raw, dtype=np.float64)
    if method in (GRADIENTS, GUIDED_BACKPROP):
        maps = postprocess.percentile_normalize(maps)
    if method != GRADIENTS:
        maps = postprocess.minmax_normalize(maps)
    if blur:
        maps = postprocess.gaussian_blur(maps, sigma)
    if open_maps:
        maps = postprocess.opening(maps)
    return maps


def localize(images: Tensor, source: nn.Module, cloner: nn.Module, loss: nn.Module, *,
             method: str = GRADIENTS, n_samples: int = 50, sigma: float = 0.15,
             generator: torch.Generator | None = None, max_batch: int | None = None,
             blur: bool = True, blur_sigma: float | None = None, open_maps: bool = False) -> np.ndarray:
    """(B, H, W) numpy localisation maps in [0, 1]: `attribution_maps` then `finish_maps`."""
    raw = attribution_maps(images, source, cloner, loss, method=method, n_samples=n_samples,
                           sigma=sigma, generator=generator, max_batch=max_batch)
    return finish_maps(raw.numpy(), method, blur=blur, sigma=blur_sigma, open_maps=open_maps)


# --- variant names: "<method>" (maps + Gaussian, the paper's) or "<method>-noblur" -------------------

NOBLUR_SUFFIX = "-noblur"  # "<method>-noblur": the method's maps without the Gaussian (Tables 1 and 11)


def localization_variants() -> tuple[str, ...]:
    """Every name RunSpec.localization accepts: each method, then each method without the blur."""
    return METHODS + tuple(m + NOBLUR_SUFFIX for m in METHODS)


def parse_method(name: str) -> tuple[str, bool]:
    """'gradients' -> ('gradients', True); 'gradients-noblur' -> ('gradients', False)."""
    if name in METHODS:
        return name, True
    method = name[:-len(NOBLUR_SUFFIX)] if isinstance(name, str) and name.endswith(NOBLUR_SUFFIX) else None
    if method not in METHODS:
        raise ValueError(f"unknown localization method {name!r}; valid: {list(localization_variants())}")
    return method, False


def check_methods(methods) -> tuple[str, ...]:
    """methods (a name or names) as a tuple without repeats; ValueError naming every valid name."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in methods if m not in localization_variants()]
    if unknown:
        raise ValueError(f"unknown localization method(s) {unknown}; valid: {list(localization_variants())}")
    return tuple(dict.fromkeys(methods))
