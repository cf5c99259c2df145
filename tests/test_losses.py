"""Training losses: the course's focal Tversky by hand, behaviour at perfect and wrong
predictions, gradients, pos_weight and the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steelscan.models.losses import LOSSES, FocalTverskyLoss, create_loss


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _targets(shape=(2, 4, 8, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(shape, generator=g) > 0.7).float()


def test_focal_tversky_matches_hand_computation() -> None:
    probs = [0.9, 0.2, 0.6, 0.1]
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    logits = torch.tensor([[_logit(p) for p in probs]])
    # by hand, as the course defines it (alpha 0.7 on false negatives, gamma 0.75):
    tp = 0.9 + 0.2  # positives' probabilities
    fn = 0.1 + 0.8  # positives' missing mass
    fp = 0.6 + 0.1  # negatives' probabilities
    smooth = 1e-6
    tversky = (tp + smooth) / (tp + 0.7 * fn + 0.3 * fp + smooth)
    expected = (1 - tversky) ** 0.75
    got = create_loss("focal_tversky")(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx((1 - 1.1 / 1.94) ** 0.75, rel=1e-5)


def test_focal_tversky_pools_the_whole_batch_like_the_course() -> None:
    """The course flattens everything; per_class=True averages class-wise indices instead."""
    target = _targets()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    p = torch.sigmoid(logits)
    tp, fn, fp = (target * p).sum(), (target * (1 - p)).sum(), ((1 - target) * p).sum()
    t = (tp + 1e-6) / (tp + 0.7 * fn + 0.3 * fp + 1e-6)
    assert torch.allclose(FocalTverskyLoss()(logits, target), (1 - t) ** 0.75)
    per_class = FocalTverskyLoss(per_class=True)(logits, target)
    assert per_class.item() != pytest.approx(((1 - t) ** 0.75).item(), rel=1e-4)


def test_focal_tversky_penalises_misses_more_than_false_alarms() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1  # 8 positive pixels
    miss = torch.where(target > 0, -5.0, -5.0)  # predicts nothing: 8 false negatives
    miss[..., 0, :] = 5.0  # ... but finds 4 of them
    alarm = torch.where(target > 0, 5.0, -5.0)  # finds all 8 ...
    alarm[..., 2, :] = 5.0  # ... plus 4 false positives
    loss = create_loss("focal_tversky")
    assert loss(miss, target) > loss(alarm, target)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(2, 4, 8, 16), (6, 4)])
def test_perfect_is_near_zero_wrong_is_large_and_gradients_flow(name: str, shape) -> None:
    target = _targets(shape)
    loss = create_loss(name)
    perfect = torch.where(target > 0, 20.0, -20.0)
    wrong = -perfect
    assert loss(perfect, target).item() < 1e-3
    assert loss(wrong, target).item() > 0.4  # (dice ignores classes absent from the batch)
    logits = torch.zeros(shape, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # descending the gradient lowers the loss
    with torch.no_grad():
        stepped = logits - 0.5 * logits.grad / logits.grad.abs().max()
    assert loss(stepped, target) < value


def test_bce_pos_weight_is_per_class() -> None:
    target = _targets()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    weights = [1.0, 2.0, 5.0, 1.0]
    got = create_loss("bce", pos_weight=weights)(logits, target)
    # by hand: positive terms of class k are multiplied by weights[k]
    w = torch.tensor(weights).view(1, 4, 1, 1)
    p = torch.sigmoid(logits)
    manual = -(w * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert torch.allclose(got, manual, atol=1e-5)
    assert torch.allclose(
        create_loss("bce", pos_weight=None)(logits, target),
        F.binary_cross_entropy_with_logits(logits, target),
    )
    # one number for all classes (TrainConfig.pos_weight is a float)
    assert torch.allclose(
        create_loss("bce", pos_weight=3.0)(logits, target),
        create_loss("bce", pos_weight=[3.0] * 4)(logits, target),
    )
    with pytest.raises(ValueError, match="pos_weight has 3 values but the logits have 4"):
        create_loss("bce", pos_weight=[1, 2, 3])(logits, target)


def test_bce_dice_is_the_weighted_sum() -> None:
    target = _targets()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    combined = create_loss("bce_dice", bce_weight=0.5, dice_weight=2.0)(logits, target)
    parts = 0.5 * create_loss("bce")(logits, target) + 2.0 * create_loss("dice")(logits, target)
    assert torch.allclose(combined, parts)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss 'lovasz'"):
        create_loss("lovasz")
    with pytest.raises(ValueError, match="pos_weight applies to the bce and bce_dice losses"):
        create_loss("dice", pos_weight=2.0)
    assert isinstance(create_loss("focal_tversky", pos_weight=None), FocalTverskyLoss)
    with pytest.raises(ValueError, match="bad options for loss 'focal'"):
        create_loss("focal", beta=3)
    assert isinstance(create_loss("BCE-Dice"), type(create_loss("bce_dice")))
