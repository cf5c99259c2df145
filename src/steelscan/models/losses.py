"""Training losses. All take LOGITS and 0/1 targets of the same shape: (N, K) for classifiers,
(N, K, H, W) for segmenters.

* ``"bce"``: BCE with logits and an optional per-class ``pos_weight`` (class imbalance: Severstal
  class 3 is ~20x more frequent than class 2);
* ``"dice"``: soft Dice, smp's multilabel ``DiceLoss`` (per class over the batch; classes absent
  from the batch do not count);
* ``"bce_dice"``: ``bce_weight * bce + dice_weight * dice``;
* ``"focal"``: smp's multilabel ``FocalLoss`` (gamma 2);
* ``"focal_tversky"``: the course's focal Tversky loss (Abraham & Khan 2018, as the course used
  it): with p = sigmoid(logits) and y the target, flattened over the WHOLE batch and all classes,
  ``TP = sum(y p)``, ``FN = sum(y (1-p))``, ``FP = sum((1-y) p)``,
  ``tversky = (TP + smooth) / (TP + alpha FN + (1 - alpha) FP + smooth)`` and
  ``loss = (1 - tversky) ** gamma`` with alpha 0.7, gamma 0.75, smooth 1e-6.
  ``per_class=True`` computes it per class and averages instead.

Build them by name with :func:`create_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss
from torch import nn


class BCELoss(nn.Module):
    """BCE with logits; ``pos_weight`` (one per class, or one for all) weighs positives: it
    broadcasts over the class axis (dim 1) of (N, K) and (N, K, H, W) logits."""

    def __init__(self, pos_weight: float | Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pw = self.pos_weight
        if pw is not None:
            if pw.numel() not in (1, logits.shape[1]):
                raise ValueError(
                    f"pos_weight has {pw.numel()} values but the logits have {logits.shape[1]} "
                    "classes"
                )
            pw = pw.to(logits.dtype).reshape(-1, *([1] * (logits.ndim - 2)))
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pw)


class SoftDiceLoss(nn.Module):
    """Soft Dice on sigmoid probabilities (smp ``DiceLoss(mode="multilabel")``)."""

    def __init__(self, smooth: float = 0.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.dice = DiceLoss(mode="multilabel", from_logits=True, smooth=smooth, eps=eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target.to(logits.dtype))


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * soft Dice``: BCE for per-pixel calibration, Dice for
    overlap on small defects."""

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        pos_weight: float | Sequence[float] | None = None,
        smooth: float = 0.0,
    ) -> None:
        super().__init__()
        self.bce = BCELoss(pos_weight)
        self.dice = SoftDiceLoss(smooth=smooth)
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(
            logits, target
        )


class BinaryFocalLoss(nn.Module):
    """Focal loss per class, averaged (smp ``FocalLoss(mode="multilabel")``)."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.focal = FocalLoss(mode="multilabel", alpha=alpha, gamma=gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, target.to(logits.dtype))


def tversky_index(
    probs: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.7,
    smooth: float = 1e-6,
    dims: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """The course's Tversky index; ``alpha`` weighs false negatives, ``1 - alpha`` false positives.

    ``dims=None`` sums over everything (the course's ``K.flatten``); otherwise over ``dims``.
    """
    target = target.to(probs.dtype)
    tp = (target * probs).sum(dim=dims) if dims else (target * probs).sum()
    fn = (target * (1 - probs)).sum(dim=dims) if dims else (target * (1 - probs)).sum()
    fp = ((1 - target) * probs).sum(dim=dims) if dims else ((1 - target) * probs).sum()
    return (tp + smooth) / (tp + alpha * fn + (1 - alpha) * fp + smooth)


# Rounding can push 1 - t to 0 or a hair below; x ** 0.75 is NaN below 0 and its gradient is
# infinite at 0, so the base is clamped to a tiny positive number.
_TINY = 1e-12


class FocalTverskyLoss(nn.Module):
    """``(1 - tversky(sigmoid(logits), target)) ** gamma``, the course's defaults."""

    def __init__(
        self, alpha: float = 0.7, gamma: float = 0.75, smooth: float = 1e-6, per_class: bool = False
    ) -> None:
        super().__init__()
        self.alpha, self.gamma, self.smooth, self.per_class = alpha, gamma, smooth, per_class

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits)
        if self.per_class:
            dims = (0, *range(2, logits.ndim))
            t = tversky_index(probs, target, self.alpha, self.smooth, dims=dims)
            return ((1 - t).clamp_min(_TINY) ** self.gamma).mean()
        t = tversky_index(probs, target, self.alpha, self.smooth)
        return (1 - t).clamp_min(_TINY) ** self.gamma


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCELoss,
    "dice": SoftDiceLoss,
    "bce_dice": BCEDiceLoss,
    "focal": BinaryFocalLoss,
    "focal_tversky": FocalTverskyLoss,
}


#: Losses that take ``pos_weight``; the others accept ``pos_weight=None`` so callers can pass
#: one config field to every loss.
_POS_WEIGHTED = ("bce", "bce_dice")


def create_loss(name: str, **opts: Any) -> nn.Module:
    """A loss module by registry name; ``opts`` go to its constructor (e.g. ``pos_weight``)."""
    key = name.lower().replace("-", "_").replace("+", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if key not in _POS_WEIGHTED and "pos_weight" in opts:
        if opts["pos_weight"] is not None:
            raise ValueError(
                f"pos_weight applies to the {' and '.join(_POS_WEIGHTED)} losses, not {name!r}"
            )
        opts = {k: v for k, v in opts.items() if k != "pos_weight"}
    try:
        return LOSSES[key](**opts)
    except TypeError as exc:
        raise ValueError(f"bad options for loss {name!r}: {exc}") from exc
