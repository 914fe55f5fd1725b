"""The MKD distillation loss (paper sec. 3.2, Eqs. 2-4), as the released code computes it.

Per critical layer: a value term (MSE over B,C,H,W) and a direction term (1 - cosine between each
image's flattened C*H*W maps). Total = direction_weight * sum(direction) + value_weight * sum(value):
the released code puts lambda on the value term, the paper text on the direction term. The same
object trains (reduction "mean"), scores images ("none": one loss per image) and is differentiated
for localisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mkdlib.models import TRAIN_LAYERS, check_layers


COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps: the norms' product is kept above it


class MKDLoss(nn.Module):
    def __init__(
        self,
        layers: Sequence[str] = TRAIN_LAYERS,
        *,
        value_weight: float = 0.01,
        direction_weight: float = 1.0,
    ):
        super().__init__()
        self.layers = check_layers(layers)
        if value_weight < 0 or direction_weight < 0 or value_weight + direction_weight == 0:
            raise ValueError(
                f"weights must be >= 0 and not both 0, got value_weight={value_weight}, "
                f"direction_weight={direction_weight}"
            )
        self.value_weight = float(value_weight)
        self.direction_weight = float(direction_weight)

    @classmethod
    def from_config(cls, cfg, layers: Sequence[str] | None = None) -> MKDLoss:
        """The loss of a configuration (MKDConfig): its weights over `layers`, by default the training
        layers (scoring and localisation use cfg.score_layers: pool3-pool5 in the released code)."""
        return cls(cfg.train_layers if layers is None else layers, value_weight=cfg.value_weight,
                   direction_weight=cfg.direction_weight)

    def terms(self, cloner: dict[str, Tensor], source: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-image terms, each (B,): value_<layer> and direction_<layer>."""
        out = {}
        for name in self.layers:
            if name not in cloner or name not in source:
                raise KeyError(f"layer {name!r} missing from the features (have {sorted(cloner)} / {sorted(source)})")
            c = cloner[name].float()  # float32 even under bf16 autocast
            s = source[name].float()
            if c.shape != s.shape:
                raise ValueError(f"{name}: cloner {tuple(cloner[name].shape)} vs source {tuple(source[name].shape)}")
            # Reduced over every dimension but the batch, as over each image's flattened C*H*W map, without
            # flattening: that would copy a channels_last tensor (~20% of a 128-px training step, measured).
            dims = tuple(range(1, c.dim()))
            out[f"value_{name}"] = (c - s).pow(2).mean(dim=dims)
            norms = torch.linalg.vector_norm(c, dim=dims) * torch.linalg.vector_norm(s, dim=dims)
            out[f"direction_{name}"] = 1.0 - (c * s).sum(dim=dims) / norms.clamp_min(COSINE_EPS)
        return out

    def forward(self, cloner: dict[str, Tensor], source: dict[str, Tensor], reduction: str = "mean") -> Tensor:
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        terms = self.terms(cloner, source)
        per_image = torch.zeros_like(next(iter(terms.values())))
        for name in self.layers:
            if self.value_weight:
                per_image = per_image + self.value_weight * terms[f"value_{name}"]
            if self.direction_weight:
                per_image = per_image + self.direction_weight * terms[f"direction_{name}"]
        # Every image has the same number of elements, so the mean of per-image losses is the
        # reference's batch loss (MSE over B,C,H,W; direction averaged over B).
        return per_image.mean() if reduction == "mean" else per_image

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, value_weight={self.value_weight}, direction_weight={self.direction_weight}"
