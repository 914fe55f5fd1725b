"""Localisation maps: batched == the released code's per-image loop, guided backprop restated with a
custom autograd Function, SmoothGrad chunking and seeding, post-processing chains, bad input."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from mkdlib import localization as loc, postprocess as pp
from mkdlib.losses import MKDLoss
from mkdlib.models import SCORE_LAYERS, Cloner, Source

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core machine: OpenMP barriers cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nets(one_thread):
    torch.manual_seed(0)
    source = Source(SCORE_LAYERS, weights=None)
    cloner = Cloner("small", layers=SCORE_LAYERS)
    for m in cloner.modules():  # non-trivial running statistics: eval vs train mode matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return source, cloner, MKDLoss(SCORE_LAYERS)


@pytest.fixture
def images():
    return torch.rand((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def nets64(nets):
    """The same networks in float64, for the exact identities: in float32 a max-pool near-tie can
    round differently under another CPU's convolution kernels (AVX2 vs AVX-512) and send a pixel's
    gradient to its neighbour; in float64 the identities hold on every CPU at the same tolerance."""
    source, cloner, loss = nets
    return copy.deepcopy(source).double(), copy.deepcopy(cloner).double(), loss


@pytest.fixture
def images64(images):
    return images.double()


def _loop_grads(images, source, cloner, loss):
    """The released code: one image at a time, loss.backward(), read x.grad."""
    grads = []
    for image in images:
        x = image[None].clone().requires_grad_(True)
        loss(cloner(x), source(x)).backward()
        grads.append(x.grad[0])
    cloner.zero_grad(set_to_none=True)
    return torch.stack(grads)


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _GuidedReLU(nn.Module):
    def forward(self, x):
        return _GuidedReLUFn.apply(x)


def _guided_copy(cloner):
    guided = copy.deepcopy(cloner).eval()
    for module in list(guided.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, _GuidedReLU())
    return guided


def _close(actual, expected):
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual.float(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_batched_gradients_equal_per_image_loop(nets64, images64):
    source, cloner, loss = nets64
    images = images64
    cloner.train()  # attribution_maps must switch to eval itself, and switch back
    maps = loc.attribution_maps(images, source, cloner, loss)
    assert cloner.training
    cloner.eval()
    expected = pp.grey(_loop_grads(images, source, cloner, loss).numpy())
    assert maps.shape == (3, SIZE, SIZE)
    _close(maps, expected)


def test_guided_backprop_equals_custom_function_restatement(nets64, images64):
    source, cloner, loss = nets64
    images = images64
    maps = loc.attribution_maps(images, source, cloner, loss, method=loc.GUIDED_BACKPROP)
    expected = pp.grey(_loop_grads(images, source, _guided_copy(cloner), loss).numpy())
    _close(maps, expected)
    vanilla = loc.attribution_maps(images, source, cloner, loss)
    assert not torch.allclose(maps, vanilla, rtol=1e-2)
    # The hooks are gone and the ReLUs in place again: vanilla gradients are unchanged afterwards.
    assert all(not m._backward_hooks for m in cloner.modules())
    assert all(m.inplace for m in cloner.modules() if isinstance(m, torch.nn.ReLU))
    _close(vanilla, pp.grey(_loop_grads(images, source, cloner.eval(), loss).numpy()))


def test_no_side_effects_on_networks(nets, images):
    source, cloner, loss = nets
    for mode in (True, False):
        cloner.train(mode)
        for method in loc.METHODS:
            loc.attribution_maps(images[:1], source, cloner, loss, method=method, n_samples=2)
            assert cloner.training is mode
    cloner.eval()
    assert all(p.grad is None for p in cloner.parameters())
    assert all(not p.requires_grad and p.grad is None for p in source.parameters())


def test_chunked_equals_unchunked(nets64, images64):
    source, cloner, loss = nets64
    images = images64
    for method in (loc.GRADIENTS, loc.GUIDED_BACKPROP):
        whole = loc.attribution_maps(images, source, cloner, loss, method=method)
        _close(loc.attribution_maps(images, source, cloner, loss, method=method, max_batch=2), whole)
    kw = dict(method=loc.SMOOTHGRAD, n_samples=4)
    whole = loc.attribution_maps(images, source, cloner, loss, generator=torch.Generator().manual_seed(3), **kw)
    parts = loc.attribution_maps(images, source, cloner, loss, generator=torch.Generator().manual_seed(3),
                                 max_batch=5, **kw)  # chunks straddle images
    _close(parts, whole)
    assert loc.default_max_batch(128, 128) == 32 and loc.default_max_batch(256, 256) == 8


def test_smoothgrad_seeding_and_zero_noise(nets, images):
    source, cloner, loss = nets

    def run(seed, **kw):
        kw = {"method": loc.SMOOTHGRAD, "n_samples": 3, **kw}
        return loc.attribution_maps(images, source, cloner, loss, generator=torch.Generator().manual_seed(seed), **kw)

    torch.testing.assert_close(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    # No noise: every copy is the image, so the mean is the normalised vanilla map.
    vanilla = loc.attribution_maps(images, source, cloner, loss).numpy()
    _close(run(0, sigma=0.0), pp.percentile_normalize(vanilla))


@pytest.mark.parametrize("method", [loc.SMOOTHGRAD, loc.SMOOTHGRAD_REFERENCE])
def test_batched_smoothgrad_equals_per_image_loop(nets, images, method):
    source, cloner, loss = nets
    kw = dict(method=method, n_samples=3)
    batched = loc.attribution_maps(images, source, cloner, loss, generator=torch.Generator().manual_seed(4), **kw)
    gen = torch.Generator().manual_seed(4)  # noise is drawn image by image: the same draws
    looped = torch.cat([loc.attribution_maps(image[None], source, cloner, loss, generator=gen, **kw)
                        for image in images])
    _close(batched, looped)


def test_noise_levels():
    images = torch.stack([torch.rand(3, 4, 4), 2 * torch.rand(3, 4, 4)])
    images[0].view(-1)[:2] = torch.tensor([0.0, 1.0])  # range 1
    images[1].view(-1)[:2] = torch.tensor([0.0, 2.0])  # range 2
    torch.testing.assert_close(loc.noise_std(images, loc.SMOOTHGRAD_REFERENCE), torch.tensor([0.0025, 0.000625]))
    torch.testing.assert_close(loc.noise_std(images, loc.SMOOTHGRAD, sigma=0.15), torch.tensor([0.15, 0.30]))
    with pytest.raises(ValueError, match="constant image"):
        loc.noise_std(torch.zeros(1, 3, 4, 4), loc.SMOOTHGRAD_REFERENCE)


def test_finish_maps_chains():
    raw = np.random.default_rng(0).gamma(1.0, size=(2, SIZE, SIZE))
    np.testing.assert_allclose(loc.finish_maps(raw, loc.GRADIENTS),
                               pp.gaussian_blur(pp.percentile_normalize(raw), 1.0))
    np.testing.assert_allclose(loc.finish_maps(raw, loc.SMOOTHGRAD, blur=False), pp.minmax_normalize(raw))
    np.testing.assert_allclose(loc.finish_maps(raw, loc.GUIDED_BACKPROP, open_maps=True),
                               pp.opening(pp.gaussian_blur(pp.minmax_normalize(pp.percentile_normalize(raw)))))


@pytest.mark.parametrize("method", loc.METHODS)
def test_localize_gives_unit_range_maps(nets, images, method):
    source, cloner, loss = nets
    maps = loc.localize(images[:2], source, cloner, loss, method=method, n_samples=2,
                        generator=torch.Generator().manual_seed(0))
    assert isinstance(maps, np.ndarray) and maps.shape == (2, SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0


def test_bad_input(nets, images):
    source, cloner, loss = nets
    with pytest.raises(ValueError, match="valid methods.*gradients.*smoothgrad-reference.*guided-backprop"):
        loc.attribution_maps(images, source, cloner, loss, method="gradcam")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        loc.attribution_maps(images[:, :1], source, cloner, loss)
    with pytest.raises(ValueError, match="empty"):
        loc.attribution_maps(images[:0], source, cloner, loss)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loc.attribution_maps(bad, source, cloner, loss)
