"""The Inspector: one object that turns images into :class:`InspectionResult` records.

It glues the stages together: decode -> preprocess (normalise + pad) -> classify (the gate) ->
segment (only the images the gate lets through when the gate is hard) -> post-process (thresholds,
minimum areas, boxes). The CLI, the service and evaluation all use it, so they agree exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelscan.imageio import decode_image, read_image, to_channels
from steelscan.inference.engines import Engine, make_engine
from steelscan.inference.preprocess import PadMode, crop, to_batch
from steelscan.inference.result import ClassResult, InspectionResult
from steelscan.manifest import ModelManifest, PostProcess

ImageInput = np.ndarray | str | Path | bytes


class WrongImageSize(ValueError):
    """An image's size is not the one the model was validated at (raised only in strict mode)."""

    def __init__(self, got: tuple[int, int], expected: tuple[int, int], name: str = "image"):
        self.got = got
        self.expected = expected
        super().__init__(
            f"{name}: size {got[1]}x{got[0]} (WxH) differs from the model's "
            f"{expected[1]}x{expected[0]}"
        )


def any_defect(class_probs: np.ndarray) -> float:
    """P(any defect) from a multi-label classifier's per-class probabilities.

    Uses the model layer's definition (the max, so the gate threshold and class thresholds stay
    comparable) when it is importable, and the same rule otherwise.
    """
    p = np.asarray(class_probs, dtype=np.float32)
    try:
        from steelscan.models.factory import any_defect_probability
    except ImportError:
        return float(p.max()) if p.size else 0.0
    return float(np.asarray(any_defect_probability(p[None]))[0])


class Inspector:
    """Run a model bundle on images.

    ``model`` is a bundle directory or a :class:`steelscan.bundle.LoadedBundle`. ``gate_mode``
    overrides the bundle's tuned mode (``hard``: images whose any-defect probability is under the
    gate threshold are never segmented; ``soft``/``none``: all are). ``tta`` averages the segmenter
    over the identity, horizontal and vertical flips. ``strict_size`` makes :meth:`check_size`
    reject images that differ from the manifest's size (the service uses that); otherwise any size
    is accepted and padded. Remaining keyword arguments go to the engine (``device``,
    ``channels_last``, ``bf16`` for torch).
    """

    def __init__(
        self,
        model: Any,
        engine: str | Engine = "torch",
        gate_mode: str | None = None,
        tta: bool = False,
        batch_size: int = 4,
        postprocess: PostProcess | None = None,
        *,
        strict_size: bool = False,
        pad_mode: PadMode = "reflect",
        **engine_opts: Any,
    ) -> None:
        if isinstance(model, (str, Path)):
            from steelscan.bundle import load_bundle

            model = load_bundle(model)
        self.bundle = model
        self.manifest: ModelManifest = model.manifest
        self.engine: Engine = (
            make_engine(engine, model, **engine_opts) if isinstance(engine, str) else engine
        )
        if not self.engine.has_segmenter:
            raise ValueError("the model bundle has no segmenter; it is needed to find defects")
        pp = postprocess or self.manifest.postprocess
        if gate_mode is not None:
            if gate_mode not in ("hard", "soft", "none"):
                raise ValueError(f"gate_mode must be hard, soft or none, got {gate_mode!r}")
            pp = pp.model_copy(update={"gate_mode": gate_mode})
        self.postprocess = pp
        self.tta = bool(tta)
        self.batch_size = max(1, int(batch_size))
        self.strict_size = strict_size
        self.pad_mode: PadMode = pad_mode
        spec = self.manifest.classifier
        self._classic_gate = bool(self.engine.has_classifier and spec and spec.num_outputs == 1)

    # -- introspection ------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def class_ids(self) -> list[int]:
        return list(self.manifest.class_ids)

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def expected_size(self) -> tuple[int, int]:
        return (self.manifest.image_height, self.manifest.image_width)

    def check_size(self, h: int, w: int, name: str = "image") -> None:
        """Raise :class:`WrongImageSize` when strict and (h, w) is not the model's size.

        Without ``strict_size`` any non-empty image is accepted: it is padded to the pad multiple
        and the output cropped back, since the networks are fully convolutional.
        """
        if h < 1 or w < 1:
            raise WrongImageSize((h, w), self.expected_size, name)
        if self.strict_size and (h, w) != self.expected_size:
            raise WrongImageSize((h, w), self.expected_size, name)

    # -- stage helpers ------------------------------------------------------------------------
    def _decode(self, image: ImageInput, name: str) -> np.ndarray:
        c = self.manifest.in_channels
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ValueError(
                    f"{name}: expected an H x W (x C) uint8 array, got {image.dtype} {image.shape}"
                )
            return to_channels(image, c)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_image(bytes(image), name=name, channels=c)
        if isinstance(image, (str, Path)):
            return read_image(image, channels=c)
        raise TypeError(f"cannot inspect a {type(image).__name__}; pass an array, a path or bytes")

    def _defect_prob(self, class_probs: np.ndarray) -> float:
        if not self.engine.has_classifier:
            return float("nan")  # filled from the masks in finish()
        if self._classic_gate:
            return float(class_probs[0])
        return any_defect(class_probs)

    def _gated(self, defect_prob: float, pp: PostProcess) -> bool:
        """True when the hard gate says: do not segment this image."""
        return (
            pp.gate_mode == "hard"
            and self.engine.has_classifier
            and defect_prob < pp.gate_threshold
        )

    def _segment(self, batch: np.ndarray) -> np.ndarray:
        probs = self.engine.segment(batch)
        if self.tta:
            probs = probs + self.engine.segment(batch[..., ::-1].copy())[..., ::-1]
            probs = probs + self.engine.segment(batch[..., ::-1, :].copy())[..., ::-1, :]
            probs = probs / 3.0
        return probs.astype(np.float32, copy=False)

    def _raw_chunk(
        self, images: Sequence[np.ndarray], skip_gated: bool, timings: list[dict[str, float]]
    ) -> list[Any]:
        from steelscan.inference.raw import RawPrediction

        K = self.num_classes
        t0 = time.perf_counter()
        batch, sizes = to_batch(images, self.manifest, pad_mode=self.pad_mode)
        t_pre = (time.perf_counter() - t0) * 1000 / len(images)

        t0 = time.perf_counter()
        if self.engine.has_classifier:
            cls = self.engine.classify(batch).astype(np.float32, copy=False)
            if cls.shape[1] == 1:  # classic defect / no-defect gate: same probability for all K
                cls = np.repeat(cls, K, axis=1)
        else:
            cls = np.zeros((len(images), K), dtype=np.float32)
        t_cls = (time.perf_counter() - t0) * 1000 / len(images) if self.engine.has_classifier else 0

        keep = [
            i
            for i in range(len(images))
            if not (skip_gated and self._gated(self._defect_prob(cls[i]), self.postprocess))
        ]
        masks: list[np.ndarray | None] = [None] * len(images)
        t_seg = 0.0
        if keep:
            t0 = time.perf_counter()
            sub = batch if len(keep) == len(images) else batch[keep]
            seg = crop(self._segment(sub), [sizes[i] for i in keep])
            t_seg = (time.perf_counter() - t0) * 1000 / len(keep)
            for i, m in zip(keep, seg, strict=True):
                masks[i] = m
        kept = set(keep)
        out = []
        for i, (h, w) in enumerate(sizes):
            m = masks[i]
            if m is None:  # skipped by the hard gate: nothing can be present
                m = np.zeros((K, h, w), dtype=np.float32)
            out.append(RawPrediction(class_probs=cls[i].copy(), mask_probs=m))
            timings.append(
                {"preprocess": t_pre, "classify": t_cls, "segment": t_seg if i in kept else 0.0}
            )
        return out

    # -- public API ---------------------------------------------------------------------------
    def raw(self, images: Sequence[np.ndarray], *, skip_gated: bool = True) -> list[Any]:
        """Model probabilities before post-processing, one :class:`RawPrediction` per image.

        With a hard gate, images under the gate threshold are not segmented (their mask
        probabilities are zeros) unless ``skip_gated=False`` (tuning needs every mask).
        """
        return self._raw_timed(images, skip_gated=skip_gated)[0]

    def _raw_timed(
        self, images: Sequence[np.ndarray], *, skip_gated: bool = True
    ) -> tuple[list[Any], list[dict[str, float]]]:
        arrs = [self._decode(img, f"image {i}") for i, img in enumerate(images)]
        for i, a in enumerate(arrs):
            self.check_size(a.shape[0], a.shape[1], f"image {i}")
        raws: list[Any] = []
        timings: list[dict[str, float]] = []
        for start in range(0, len(arrs), self.batch_size):
            chunk = arrs[start : start + self.batch_size]
            raws.extend(self._raw_chunk(chunk, skip_gated, timings))
        return raws, timings

    def finish(
        self, raw: Any, image_id: str, postprocess: PostProcess | None = None
    ) -> InspectionResult:
        """Gate + thresholds + minimum areas + boxes: a :class:`RawPrediction` becomes a verdict."""
        from steelscan.inference.postprocess import apply, boxes_from_mask

        t0 = time.perf_counter()
        pp = postprocess or self.postprocess
        if not self.engine.has_classifier:  # no gate to apply: the class probabilities are empty
            pp = pp.model_copy(update={"gate_mode": "none"})
        class_probs = np.asarray(raw.class_probs, dtype=np.float32)
        mask_probs = np.asarray(raw.mask_probs, dtype=np.float32)
        K, h, w = mask_probs.shape
        mask_max = mask_probs.reshape(K, -1).max(axis=1) if h * w else np.zeros(K, np.float32)
        defect_prob = self._defect_prob(class_probs)
        if not self.engine.has_classifier:
            defect_prob = float(mask_max.max()) if K else 0.0
        if self._gated(defect_prob, pp):
            present = np.zeros(K, dtype=bool)
            masks = np.zeros((K, h, w), dtype=np.uint8)
        else:
            present, masks = apply(class_probs, mask_probs, pp)
            present = np.asarray(present, dtype=bool)
            masks = np.asarray(masks, dtype=np.uint8)
        # A per-class probability only exists with a multi-label classifier; otherwise the most
        # confident pixel says how sure the segmenter is about that class.
        per_class = (
            class_probs if self.engine.has_classifier and not self._classic_gate else mask_max
        )
        classes = []
        for k in range(K):
            m = masks[k] if present[k] else np.zeros((h, w), dtype=np.uint8)
            classes.append(
                ClassResult(
                    index=k,
                    class_id=int(self.manifest.class_ids[k]),
                    name=self.manifest.classes[k],
                    probability=float(per_class[k]),
                    present=bool(present[k]),
                    mask=m,
                    area=int(m.sum(dtype=np.int64)),
                    boxes=[tuple(map(int, b)) for b in boxes_from_mask(m)] if present[k] else [],
                )
            )
        result = InspectionResult(
            image_id=image_id,
            height=h,
            width=w,
            defect_probability=float(defect_prob),
            classes=classes,
        )
        result.timings_ms["postprocess"] = (time.perf_counter() - t0) * 1000
        return result

    def inspect_batch(
        self, items: Sequence[tuple[str, ImageInput]], *, decode_ms: Sequence[float] | None = None
    ) -> list[InspectionResult]:
        """Inspect several images at once (batched through the networks).

        ``decode_ms`` lets a caller that decoded the images itself report that time per image.
        """
        if not items:
            return []
        t0 = time.perf_counter()
        arrs = [self._decode(img, str(image_id)) for image_id, img in items]
        t_dec = (time.perf_counter() - t0) * 1000 / len(items)
        for (image_id, _), a in zip(items, arrs, strict=True):
            self.check_size(a.shape[0], a.shape[1], str(image_id))
        raws, timings = self._raw_timed(arrs)
        results = []
        for i, ((image_id, _), raw, t) in enumerate(zip(items, raws, timings, strict=True)):
            res = self.finish(raw, str(image_id))
            dec = t_dec + (decode_ms[i] if decode_ms is not None else 0.0)
            res.timings_ms = {"decode": dec, **t, "postprocess": res.timings_ms["postprocess"]}
            results.append(res)
        return results

    def inspect(self, image: ImageInput, image_id: str | None = None) -> InspectionResult:
        """Inspect one image given as an array, a file path or encoded bytes."""
        if image_id is None:
            image_id = Path(image).name if isinstance(image, (str, Path)) else "image"
        t0 = time.perf_counter()
        arr = self._decode(image, image_id)
        dec = (time.perf_counter() - t0) * 1000
        return self.inspect_batch([(image_id, arr)], decode_ms=[dec])[0]
