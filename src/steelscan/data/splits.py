"""Train/validation split by image, stratified by the combination of classes present.

Stratifying by the exact combination (e.g. ``"3+4"``, ``"none"``) keeps rare multi-class images
and defect-free images in both splits in proportion. Combinations with a single image cannot be
split and go to train. Allocation is done by hand (largest remainder per group) rather than with
``sklearn.model_selection.train_test_split(stratify=...)``, because that refuses groups of one and
validation sets smaller than the number of groups, both common on small datasets.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from steelscan.data.records import AnnotatedImage, Dataset


def combination(record: AnnotatedImage) -> str:
    """The stratum of an image: its present classes joined by ``+``, or ``none``/``defect``."""
    present = [name for name, p in zip(record.classes, record.present, strict=True) if p]
    if present:
        return "+".join(present)
    return "defect" if record.defective else "none"


def split_ids(ds: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split image ids into (train, val), seeded and stratified; the same seed gives the same split.

    Every id lands in exactly one split; both lists are sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[str]] = defaultdict(list)
    for r in ds.records:
        groups[combination(r)].append(r.image_id)
    rng = np.random.default_rng(seed)
    splittable = {k: sorted(v) for k, v in sorted(groups.items()) if len(v) >= 2}
    n_split = sum(len(v) for v in splittable.values())
    target = round(val_fraction * n_split)
    if val_fraction > 0 and n_split and target == 0:
        target = 1
    # Largest-remainder allocation of the validation size over groups, each keeping >= 1 in train.
    quotas = {k: val_fraction * len(v) for k, v in splittable.items()}
    take = {k: min(math.floor(q), len(splittable[k]) - 1) for k, q in quotas.items()}
    order = sorted(quotas, key=lambda k: (-(quotas[k] - math.floor(quotas[k])), k))
    while sum(take.values()) < target:
        grown = False
        for k in order:
            if sum(take.values()) >= target:
                break
            if take[k] < len(splittable[k]) - 1:
                take[k] += 1
                grown = True
        if not grown:
            break
    val: list[str] = []
    for k, ids in splittable.items():
        val += [ids[i] for i in rng.permutation(len(ids))[: take[k]]]
    val_set = set(val)
    train = sorted(r.image_id for r in ds.records if r.image_id not in val_set)
    return train, sorted(val_set)
