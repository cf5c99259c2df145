"""Training augmentations (albumentations).

Steel strips are imaged from above with a fixed camera, so the label-preserving changes are flips
(defects look the same mirrored) and lighting (brightness/contrast drift between lines). Segmenter
crops are biased towards defects because most of a 1600-pixel strip is clean steel: without the
bias a 512-wide crop is usually empty and the network learns to predict nothing.
Validation applies no augmentation and runs at full resolution, like inference.
"""

from __future__ import annotations

import albumentations as A


def crop_fits(image_hw: tuple[int, int], crop_hw: tuple[int | None, int | None]) -> bool:
    """True when a crop of ``crop_hw`` is set and fits inside every image of size ``image_hw``.

    VOC datasets (NEU, 200 x 200) are smaller than the default 256 x 512 crop: they then train on
    full images instead (no crop), which is what the caller decides from this.
    """
    ch, cw = crop_hw
    if ch is None or cw is None:
        return False
    return ch <= image_hw[0] and cw <= image_hw[1]


def train_transform(
    crop_hw: tuple[int, int] | None = None,
    defect_crop_bias: float = 0.5,
    *,
    seed: int | None = None,
) -> A.Compose:
    """Flips + brightness/contrast, then (optionally) a ``crop_hw`` crop.

    With probability ``defect_crop_bias`` the crop is taken by ``CropNonEmptyMaskIfExists`` (a
    window containing a random defect pixel, or a random window when the image is clean), otherwise
    by ``RandomCrop``. Masks are passed as ``masks=[...]`` (one per class) so that every class
    counts as "non-empty".
    """
    steps: list = []
    if crop_hw is not None:
        h, w = crop_hw
        steps.append(
            A.OneOf(
                [
                    A.CropNonEmptyMaskIfExists(height=h, width=w, p=defect_crop_bias),
                    A.RandomCrop(height=h, width=w, p=1.0 - defect_crop_bias),
                ],
                p=1.0,
            )
        )
    steps += [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]
    return A.Compose(steps, seed=seed)


def val_transform() -> None:
    """Validation uses the image as it is (full resolution, no augmentation)."""
    return None
