"""Model bundles: a directory with ``manifest.json`` and safetensors weights.

```
model/
  manifest.json            ModelManifest (steelscan.manifest), pretty-printed JSON
  classifier.safetensors   the gate's state dict      (when the manifest has a classifier)
  segmenter.safetensors    the segmenter's state dict (when the manifest has a segmenter)
  ...                      anything else (onnx/, reports) is kept when the bundle is re-saved
```

Loading rebuilds each network from its :class:`~steelscan.manifest.StageSpec` with
:func:`steelscan.models.factory.build_from_spec` (no download) and loads the weights strictly:
safetensors only, so loading never unpickles and never runs code from the file.

Saving is atomic: everything is written to a temporary sibling directory which then replaces the
bundle with a rename, so a crash never leaves a half-written bundle. Files of an existing bundle
that this save does not write (ONNX exports, reports, logs) are carried over (hard links where
possible). Note the directory itself is replaced: files held open inside the old directory
during the save (e.g. an unclosed logger) keep writing to the old, removed copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from steelscan.manifest import FORMAT_VERSION, MANIFEST_NAME, ModelManifest, StageSpec

STAGES = ("classifier", "segmenter", "detector")
_SPEC_FIELDS = ("arch", "encoder", "num_outputs", "aux_head")


class BundleError(ValueError):
    """A bundle cannot be written or read; the message names the file and what is wrong."""


_UNLOADED: Any = object()


class LoadedBundle:
    """A bundle: its manifest and its directory; the torch networks are built on first use.

    The runtime engines (onnx, openvino) read only the manifest and their ONNX files, so a
    bundle loaded for them never imports torch. ``classifier`` / ``segmenter`` rebuild the
    networks from the safetensors weights the first time they are asked for (the torch engine,
    export, training); training passes its in-memory networks instead.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        classifier: Any = _UNLOADED,
        segmenter: Any = _UNLOADED,
        path: str | os.PathLike | None = None,
        detector: Any = _UNLOADED,
        *,
        device: str = "cpu",
    ) -> None:
        self.manifest = manifest
        self.path = Path(path) if path is not None else Path(".")
        self.device = device
        self._modules: dict[str, Any] = {
            "classifier": classifier,
            "segmenter": segmenter,
            "detector": detector,
        }

    def _stage(self, stage: str) -> Any:
        if self._modules[stage] is _UNLOADED:
            self._modules[stage] = _load_stage(self.path, self.manifest, stage, self.device)
        return self._modules[stage]

    @property
    def classifier(self) -> Any:  # torch.nn.Module | None
        return self._stage("classifier")

    @property
    def segmenter(self) -> Any:  # torch.nn.Module | None
        return self._stage("segmenter")

    @property
    def detector(self) -> Any:  # torch.nn.Module | None
        return self._stage("detector")

    def load_weights(self) -> LoadedBundle:
        """Build every network now (so a broken weights file fails at load, not mid-run)."""
        for stage in STAGES:
            self._stage(stage)
        return self


# --------------------------------------------------------------------------- helpers


def _weights_path(bundle: Path, spec: StageSpec, stage: str) -> Path:
    rel = Path(spec.weights_file)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise BundleError(
            f"{bundle / MANIFEST_NAME}: {stage}.weights_file must be a file name inside the "
            f"bundle, got {spec.weights_file!r}"
        )
    return bundle / rel


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        parts.append(f"field '{loc}': {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def named_files(manifest: ModelManifest) -> list[str]:
    """Every file a manifest names, relative to the bundle (weights first, then ONNX)."""
    names: list[str] = []
    for stage in STAGES:
        spec = getattr(manifest, stage)
        if spec is None:
            continue
        for name in (spec.weights_file, spec.onnx_file, spec.onnx_int8_file):
            if name and name not in names:
                names.append(name)
    return names


def with_file_hashes(directory: Path, manifest: ModelManifest) -> ModelManifest:
    """``manifest`` with ``files`` set to the sha256 of every file it names in ``directory``."""
    files = {}
    for name in named_files(manifest):
        path = Path(directory) / name
        if path.is_file():
            files[name] = sha256_file(path)
    return manifest.model_copy(update={"files": files})


def write_manifest(directory: str | os.PathLike, manifest: ModelManifest) -> ModelManifest:
    """Record the files' hashes and write ``manifest.json`` atomically; returns what was written.

    Every writer of a bundle's manifest (save, export, re-tuning) goes through here, so the
    hashes always describe the files beside it."""
    directory = Path(directory)
    manifest = with_file_hashes(directory, manifest)
    _write_json_atomic(directory / MANIFEST_NAME, manifest.model_dump_json(indent=2))
    return manifest


def verify_files(bundle: Path, manifest: ModelManifest) -> None:
    """Refuse a bundle whose files differ from the sha256 its manifest recorded."""
    for name, digest in manifest.files.items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path} is missing (listed in {MANIFEST_NAME} files)")
        if sha256_file(path) != digest:
            raise BundleError(
                f"{path}: its sha256 differs from the one recorded in {bundle / MANIFEST_NAME} "
                "(the file was changed or corrupted after the bundle was written)"
            )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: readable like any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_model_matches(model: Any, spec: StageSpec, stage: str) -> None:
    """Refuse to save weights under a spec they were not built from (load would fail later)."""
    made = getattr(model, "steelscan_spec", None)
    if not isinstance(made, StageSpec):
        return
    for name in _SPEC_FIELDS:
        if getattr(made, name) != getattr(spec, name):
            raise BundleError(
                f"manifest.{stage}.{name} is {getattr(spec, name)!r} but the {stage} model was "
                f"created with {getattr(made, name)!r}"
            )


# --------------------------------------------------------------------------- save


def swap_into_place(tmp: Path, out: Path) -> None:
    """Make the finished directory ``tmp`` the bundle ``out`` with renames only, so ``out`` always
    holds a whole bundle: the old one until the swap, the new one after (training's publish
    step and :func:`save_bundle` both end here)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def save_bundle(
    out_dir: str | os.PathLike,
    manifest: ModelManifest,
    classifier: Any = None,
    segmenter: Any = None,
    detector: Any = None,
) -> Path:
    """Write ``manifest.json`` and the weights of the given models atomically; returns the dir.

    Each model given needs its stage in the manifest (``manifest.classifier`` /
    ``manifest.segmenter``) and vice versa; weights go to that spec's ``weights_file``
    (``classifier.safetensors`` / ``segmenter.safetensors`` by default).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if isinstance(manifest, dict):
        try:
            manifest = ModelManifest.model_validate(manifest)
        except ValidationError as exc:
            raise BundleError(f"invalid manifest for {out}: {_format_validation(exc)}") from exc
    models = {"classifier": classifier, "segmenter": segmenter, "detector": detector}
    written: dict[str, Path] = {}
    for stage in STAGES:
        spec, model = getattr(manifest, stage), models[stage]
        if (spec is None) != (model is None):
            have = "a spec in the manifest but no model" if model is None else "a model but no spec"
            raise BundleError(f"cannot save {out}: {stage} has {have} (manifest.{stage})")
        if model is not None:
            _check_model_matches(model, spec, stage)
            written[stage] = _weights_path(out, spec, stage)
    if out.exists() and not out.is_dir():
        raise BundleError(f"cannot save bundle to {out}: it exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a bundle is shared like a folder
    try:
        for stage, target in written.items():
            state = {
                k: v.detach().to("cpu").contiguous() for k, v in models[stage].state_dict().items()
            }
            dest = tmp / target.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            save_file(state, str(dest), metadata={"format": "pt", "stage": stage})
        if out.exists():
            ours = {MANIFEST_NAME} | {t.relative_to(out).parts[0] for t in written.values()}
            for entry in out.iterdir():
                if entry.name in ours or entry.name.startswith(f".{out.name}.tmp-"):
                    continue
                dest = tmp / entry.name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(entry), str(dest))
        write_manifest(tmp, manifest)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------- load


def read_manifest(path: str | os.PathLike) -> ModelManifest:
    """The validated manifest of a bundle directory (or of a ``manifest.json`` path)."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST_NAME:
        p = p.parent
    if not p.exists():
        raise BundleError(f"model bundle {p} does not exist")
    if not p.is_dir():
        raise BundleError(
            f"model bundle {p} is not a directory (expected a folder with "
            f"{MANIFEST_NAME} and *.safetensors)"
        )
    mpath = p / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: {p} is not a steelscan model bundle")
    try:
        data = json.loads(mpath.read_text("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{mpath} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{mpath} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    try:
        manifest = ModelManifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{mpath} is invalid: {_format_validation(exc)}") from exc
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: format_version {manifest.format_version} was written by a newer steelscan "
            f"(this one reads up to {FORMAT_VERSION}); upgrade steelscan"
        )
    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(f"{mpath} is inconsistent: {'; '.join(problems)}")
    return manifest


def manifest_problems(manifest: ModelManifest) -> list[str]:
    """What makes a well-typed manifest unusable (lists that disagree with the classes, sizes
    below 1): caught at load, not as a failure of every image or an IndexError mid-run."""
    from steelscan.imaging import channel_stats

    k = len(manifest.classes)
    out: list[str] = []
    if k == 0:
        out.append("field 'classes' is empty")
    if len(manifest.class_ids) != k:
        out.append(f"field 'class_ids' has {len(manifest.class_ids)} entries for {k} classes")
    elif len(set(manifest.class_ids)) != k:
        out.append(f"field 'class_ids' repeats an id: {manifest.class_ids}")
    pp = manifest.postprocess
    for name in ("class_thresholds", "pixel_thresholds", "min_areas", "min_component_areas"):
        n = len(getattr(pp, name))
        if n != k:
            out.append(f"field 'postprocess.{name}' has {n} entries for {k} classes")
    for name in ("image_height", "image_width", "pad_multiple"):
        if getattr(manifest, name) < 1:
            out.append(f"field '{name}' is {getattr(manifest, name)}; it must be at least 1")
    if manifest.in_channels not in (1, 3):
        out.append(f"field 'in_channels' is {manifest.in_channels}; it must be 1 or 3")
    else:
        norm = manifest.normalization
        try:
            channel_stats(norm.mean, norm.std, manifest.in_channels)
        except ValueError as exc:
            out.append(f"field 'normalization': {exc}")
        if any(not v > 0 for v in norm.std):
            out.append(f"field 'normalization.std' must be positive, got {norm.std}")
    seg = manifest.segmenter
    if seg is not None and seg.num_outputs != k:
        out.append(f"field 'segmenter.num_outputs' is {seg.num_outputs} for {k} classes")
    return out


def _load_stage(bundle: Path, manifest: ModelManifest, stage: str, device: str) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from steelscan.models.detector import DETECTOR_ARCHS, is_detector_arch
    from steelscan.models.factory import SEGMENTER_ARCHS, build_from_spec, is_segmenter_arch

    spec: StageSpec | None = getattr(manifest, stage)
    if spec is None:
        return None
    wpath = _weights_path(bundle, spec, stage)
    if not wpath.is_file():
        raise BundleError(f"{wpath} is missing (named by manifest.{stage}.weights_file)")
    if is_detector_arch(spec.arch) != (stage == "detector"):
        kind = "not a detector" if stage == "detector" else "a detector"
        raise BundleError(
            f"{bundle / MANIFEST_NAME}: manifest.{stage}.arch {spec.arch!r} is {kind} "
            f"architecture (detectors: {', '.join(DETECTOR_ARCHS)})"
        )
    if stage != "detector" and is_segmenter_arch(spec.arch) != (stage == "segmenter"):
        kind = "a segmenter" if stage == "classifier" else "not a segmenter"
        raise BundleError(
            f"{bundle / MANIFEST_NAME}: manifest.{stage}.arch {spec.arch!r} is {kind} "
            f"architecture (segmenters: {', '.join(SEGMENTER_ARCHS)})"
        )
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{wpath} is corrupted or not a safetensors file ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        model = build_from_spec(spec, manifest.in_channels)
    except Exception as exc:
        raise BundleError(
            f"{bundle / MANIFEST_NAME}: cannot build the {stage} from manifest.{stage} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = " ".join(lines[1:4]) if len(lines) > 1 else lines[0] if lines else ""
        raise BundleError(
            f"{wpath} does not match the {stage} described in the manifest "
            f"(arch {spec.arch!r}, encoder {spec.encoder!r}, {spec.num_outputs} outputs, "
            f"in_channels {manifest.in_channels}): {detail[:600]}"
        ) from exc
    return model.to(device).eval()


def load_bundle(
    path: str | os.PathLike, device: str = "cpu", *, weights: bool = False
) -> LoadedBundle:
    """Read a bundle (no network, no unpickling). The torch networks are rebuilt from their
    safetensors weights on first use, or now with ``weights=True``; the weights files must exist
    either way."""
    manifest = read_manifest(path)
    p = Path(path)
    bundle = p.parent if p.is_file() else p
    if all(getattr(manifest, stage) is None for stage in STAGES):
        raise BundleError(
            f"{bundle / MANIFEST_NAME} describes no classifier, no segmenter and no detector"
        )
    for stage in STAGES:
        spec = getattr(manifest, stage)
        if spec is not None:
            wpath = _weights_path(bundle, spec, stage)
            if not wpath.is_file():
                raise BundleError(f"{wpath} is missing (named by manifest.{stage}.weights_file)")
    verify_files(bundle, manifest)
    loaded = LoadedBundle(manifest, path=bundle, device=device)
    return loaded.load_weights() if weights else loaded


load_model = load_bundle


def update_manifest(path: str | os.PathLike, **changes: Any) -> ModelManifest:
    """Change top-level manifest fields (e.g. ``postprocess=...``, ``metrics=...``) atomically.

    Values may be pydantic models or plain dicts; the result is validated before it is written.
    """
    manifest = read_manifest(path)
    p = Path(path)
    bundle = p.parent if p.is_file() else p
    unknown = sorted(set(changes) - set(ModelManifest.model_fields))
    if unknown:
        raise BundleError(f"{bundle / MANIFEST_NAME}: unknown manifest field(s) {unknown}")
    data = manifest.model_dump()
    for key, value in changes.items():
        data[key] = value.model_dump() if isinstance(value, BaseModel) else value
    try:
        new = ModelManifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(
            f"{bundle / MANIFEST_NAME}: update is invalid: {_format_validation(exc)}"
        ) from exc
    return write_manifest(bundle, new)
