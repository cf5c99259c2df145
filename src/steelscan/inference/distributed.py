"""Batch inference on a Ray cluster: the one :class:`~steelscan.inference.predictor.Predictor` in
a Ray Data actor pool, results streamed back in input order to a driver that journals them.

Why it is built this way:

* **The same road.** Each actor loads the bundle once (its files are shipped through Ray's object
  store, sha256-checked again at load, so nodes need no shared disk for the model) and runs
  :meth:`Predictor.stream` over its share; the records it returns are the ones local ``predict``
  journals (:func:`~steelscan.inference.writers.result_record`), so the driver assembles the final
  files with the same code and they are byte for byte a local run's.
* **The same batches.** Results depend a little on which images share a forward pass (batched
  kernels, padding). The inputs are cut into *chunks* of ``batch_size`` consecutive images
  aligned at input 0, exactly the batches a local run makes, and one chunk is one row of the
  Ray dataset: Ray Data's own ``batch_size`` counts rows, so its block boundaries can never
  regroup images.
* **Exactly once, in order.** ``DataContext.execution_options.preserve_order`` makes the driver
  receive chunks in input order; the driver appends each record to the local journal
  (:mod:`steelscan.inference.journal`), so what is journaled is always a prefix and a rerun skips
  it. Ray Data runs actors with ``max_restarts=-1`` and ``max_task_retries=-1``: a killed actor is
  restarted and its unfinished chunks are retried, and a chunk's output reaches the driver once.
* **The driver owns the input list.** Folders, CSV/Parquet manifests and URIs are resolved on the
  driver (the journal needs the ordered list for its identity anyway) and handed to Ray with
  ``ray.data.from_items``; ``read_parquet``'s file-and-row-group blocks would give no global order.

``ray`` is imported only inside functions: the runtime works without the ``steelscan[ray]`` extra.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from steelscan.data.records import DataError, DataProblem
from steelscan.imageio import IMAGE_SUFFIXES

RAY_EXTRA_HINT = 'pip install "steelscan[ray]"'
SOURCE_COLUMNS = ("uri", "path", "image_uri", "image_path", "url")
ID_COLUMNS = ("image_id", "imageid", "id")
MANIFEST_SUFFIXES = (".parquet", ".pq")
MAX_BLOCKS = 10_000  # Ray dataset blocks (each a task and an object); more chunks share blocks
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class BatchError(Exception):
    """The Ray job could not run (no cluster, actors that cannot start); the message says why."""


def require_ray() -> None:
    """:class:`BatchError` with the install line when the ``steelscan[ray]`` extra is missing
    (checked before any work, so a runtime-only install fails in one clear line)."""
    import importlib.util

    missing = [m for m in ("ray", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        raise BatchError(
            f"this needs {' and '.join(missing)}, not installed here: {RAY_EXTRA_HINT} "
            "(`steelscan predict` runs the same job on this machine without it)"
        )


def is_uri(text: str) -> bool:
    """``scheme://...`` (s3, gs, hdfs, file, ...), read through ``pyarrow.fs``; else a path."""
    return bool(_URI.match(text))


# --------------------------------------------------------------------------- inputs
@dataclass
class BatchItem:
    """One image of a batch job: the id the outputs use and a local path or a URI."""

    image_id: str
    source: str  # as the outputs name it (a relative path stays relative, as in predict)
    labelled: bool = False  # from a labelled dataset folder (part of the journal's identity)

    @property
    def location(self) -> str:
        """Where an actor reads it: the URI, or the path made absolute from the driver's folder
        (an actor's working folder is not the driver's)."""
        return self.source if is_uri(self.source) else str(Path(self.source).absolute())


@dataclass
class BatchInputs:
    """The resolved inputs, shaped like :class:`steelscan.inference.inputs.Inputs`."""

    images: list[BatchItem] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _seen: dict[str, str] = field(default_factory=dict, repr=False)

    def add(self, items: Iterable[BatchItem]) -> None:
        """Append images, each id once (the first wins), as ``steelscan predict`` does."""
        seen = self._seen
        for it in items:
            prev = seen.get(it.image_id)
            if prev is not None:
                if not _same_source(prev, it.source):
                    self.notes.append(
                        f"{it.source}: image id {it.image_id} already taken by {prev}; skipped"
                    )
                continue
            seen[it.image_id] = it.source
            self.images.append(it)


def _same_source(a: str, b: str) -> bool:
    if is_uri(a) or is_uri(b):
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
        raise DataError([DataProblem(uri, f"cannot open this URI: {exc}")]) from None


def _header(data: bytes, where: str) -> list[str]:
    try:
        first = data.decode("utf-8-sig").splitlines()[:1]
    except UnicodeDecodeError:
        raise DataError([DataProblem(where, "not a UTF-8 text CSV file")]) from None
    return next(csv.reader(first), []) if first else []


def _pick(columns: Iterable[str], wanted: tuple[str, ...]) -> str | None:
    by_lower = {c.strip().lower(): c for c in columns}
    return next((by_lower[w] for w in wanted if w in by_lower), None)


def is_manifest(path: str) -> bool:
    """A Parquet file, or a CSV with a path/uri column (a CSV of ImageIds is not a manifest)."""
    suffix = Path(path.split("?", 1)[0]).suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return True
    if suffix != ".csv":
        return False
    if is_uri(path):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        return False
    try:
        return _pick(_header(head, path), SOURCE_COLUMNS) is not None
    except DataError:
        return False


def _manifest_rows(location: str) -> tuple[list[str], list[str | None], list[str | None]]:
    """(column names, sources, ids) of a CSV or Parquet manifest, local or at a URI."""
    suffix = Path(location.split("?", 1)[0]).suffix.lower()
    fs, path = _filesystem(location) if is_uri(location) else (None, location)
    try:
        if suffix in MANIFEST_SUFFIXES:
            import pyarrow.parquet as pq

            table = pq.read_table(path, filesystem=fs)
            columns = table.column_names
            src, ident = _pick(columns, SOURCE_COLUMNS), _pick(columns, ID_COLUMNS)
            sources = table.column(src).to_pylist() if src else []
            ids = table.column(ident).to_pylist() if ident else [None] * len(sources)
            return columns, [None if s is None else str(s) for s in sources], ids
        data = fs.open_input_stream(path).read() if fs is not None else Path(path).read_bytes()
    except (OSError, ValueError) as exc:
        raise DataError([DataProblem(location, f"cannot read the manifest: {exc}")]) from None
    columns = _header(data, location)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    src, ident = _pick(columns, SOURCE_COLUMNS), _pick(columns, ID_COLUMNS)
    sources = [r.get(src) for r in rows] if src else []
    return columns, sources, [r.get(ident) for r in rows] if ident else [None] * len(sources)


def read_manifest(location: str | Path) -> tuple[list[BatchItem], list[tuple[str, str]]]:
    """The images a CSV or Parquet manifest lists, and its unusable rows (row, why).

    The source column is the first of :data:`SOURCE_COLUMNS` present (case-insensitive), the id
    column the first of :data:`ID_COLUMNS` (default: the source's file name). A relative path is
    taken from the manifest's folder (or URI)."""
    location = str(location)
    columns, sources, ids = _manifest_rows(location)
    if not columns or _pick(columns, SOURCE_COLUMNS) is None:
        raise DataError(
            [
                DataProblem(
                    location,
                    "a manifest needs a column naming each image: one of "
                    + ", ".join(SOURCE_COLUMNS)
                    + f" (it has: {', '.join(columns) or 'no columns'})",
                )
            ]
        )
    base = location.rsplit("/", 1)[0] if is_uri(location) else str(Path(location).parent)
    items, missing = [], []
    for row, (src, ident) in enumerate(zip(sources, ids, strict=True), start=2):
        src = (src or "").strip()
        if not src:
            missing.append((f"{location}:{row}", "no image path or URI in this row"))
            continue
        if not is_uri(src) and not Path(src).is_absolute():
            src = f"{base}/{src}" if is_uri(location) else str(Path(base) / src)
        name = str(ident).strip() if ident not in (None, "") else unquote(src.rsplit("/", 1)[-1])
        items.append(BatchItem(name, src))
    return items, missing


def _list_uri_folder(uri: str) -> list[BatchItem]:
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (OSError, ValueError) as exc:
        raise DataError([DataProblem(uri, f"cannot list this folder: {exc}")]) from None
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.File and Path(i.base_name).suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise DataError([DataProblem(uri, "folder holds no images")])
    return [BatchItem(n, f"{uri.rstrip('/')}/{n}") for n in names]


def _from_uri(uri: str) -> list[BatchItem]:
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return _list_uri_folder(uri)
    if info.type == pafs.FileType.NotFound:
        raise DataError([DataProblem(uri, "no such file or folder")])
    return [BatchItem(unquote(uri.rsplit("/", 1)[-1]), uri)]


def resolve_batch_inputs(paths: Iterable[str | Path]) -> BatchInputs:
    """Resolve batch inputs: what ``steelscan predict`` takes (images, folders, CSVs of ids,
    datasets; :func:`steelscan.inference.inputs.resolve_inputs`), plus CSV/Parquet manifests of
    paths or URIs and URIs of images, folders or manifests. Every id once, first wins."""
    from steelscan.inference.inputs import resolve_inputs

    out = BatchInputs()
    for raw in paths:
        text = str(raw)
        if is_manifest(text):
            items, missing = read_manifest(text)
            out.missing.extend(missing)
        elif is_uri(text):
            items = _from_uri(text)
        else:
            local = resolve_inputs([text])
            out.notes.extend(local.notes)
            out.missing.extend(local.missing)
            items = [
                BatchItem(it.image_id, str(it.path), it.truth is not None) for it in local.images
            ]
        out.add(items)
    return out


# --------------------------------------------------------------------------- the actor
class UriReader:
    """Reads image bytes through ``pyarrow.fs``; one filesystem per folder (resolving an S3
    bucket's region is a request: paid once per folder, not per image)."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[Any, str | None]] = {}

    def read(self, uri: str) -> bytes:
        head, _, name = uri.rpartition("/")
        cached = None if "?" in uri else self._folders.get(head)
        if cached is None or cached[1] is None:
            fs, path = _filesystem(uri)
            plain = unquote(name)
            self._folders[head] = (fs, path[: -len(plain)] if path.endswith(plain) else None)
        else:
            fs, path = cached[0], cached[1] + unquote(name)
        with fs.open_input_stream(path) as fh:
            return fh.read()


def bundle_payload(bundle_dir: Path, manifest: Any) -> dict[str, bytes]:
    """The bundle's files (manifest and every file it names) to ship to the actors."""
    from steelscan.bundle import named_files
    from steelscan.manifest import MANIFEST_NAME

    names = [MANIFEST_NAME, *named_files(manifest), *sorted((manifest.files or {}).keys())]
    return {n: (Path(bundle_dir) / n).read_bytes() for n in dict.fromkeys(names)}


@dataclass
class ActorConfig:
    """What every actor builds its :class:`Predictor` from (the driver resolved the engine)."""

    engine: str
    options: dict[str, Any]
    batch_size: int
    gate: str | None = None
    tta: bool = False
    max_pixels: int | None = None
    label: str = ""  # "engine precision", as the journal's identity records it
    coco: bool = False  # journal each record's component scores (``--format coco``)


def unpack_bundle(files: dict[str, bytes], root: Path | None = None) -> Path:
    """Write shipped bundle files once per node, in a folder named by their contents: actors on
    one node and restarted actors share it, and nothing is left per actor (Ray ends actors
    without running their exit handlers). Load checks every file's sha256 again."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + hashlib.sha256(files[name]).digest())
    root = root or Path(tempfile.gettempdir()) / "steelscan-bundles"
    final = root / h.hexdigest()[:32]
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=root))
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    try:
        os.rename(tmp, final)  # atomic: another actor sees the whole folder or none
    except OSError:  # another actor on this node was first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class InferenceActor:
    """The callable class Ray Data runs in each actor: loads the bundle once, then turns each
    batch of chunk rows into their journal records, in order."""

    def __init__(self, files: dict[str, bytes], config: ActorConfig) -> None:
        from steelscan.imageio import set_max_pixels
        from steelscan.inference.predictor import Predictor

        set_max_pixels(config.max_pixels)
        self.predictor = Predictor(
            unpack_bundle(files),
            engine=config.engine,
            gate_mode=config.gate,
            tta=config.tta,
            batch_size=config.batch_size,
            workers=0,  # one forward pass per chunk; the pool is the parallelism
            **config.options,
        )
        self.reader = UriReader()
        self.config = config

    def records(self, items: list[list[str]]) -> list[dict[str, Any]]:
        """One chunk, ``[image_id, source, location]`` each: the records of its images, in
        order (a URI that cannot be read is an error record; the others still share one forward
        pass)."""
        from steelscan.inference.writers import error_record, result_record

        out: list[dict[str, Any] | None] = [None] * len(items)
        todo: list[tuple[int, str, Any]] = []
        for i, (image_id, source, location) in enumerate(items):
            if not is_uri(location):
                todo.append((i, image_id, Path(location)))
                continue
            try:
                todo.append((i, image_id, self.reader.read(location)))
            except (OSError, ValueError, DataError) as exc:
                out[i] = error_record(image_id, source, f"{image_id}: cannot read {source}: {exc}")
        coco = self.config.coco
        if coco:
            from steelscan.inference.coco_results import SCORES_KEY, component_scores
        gate_mode = self.predictor.postprocessor.params.gate_mode
        preds = self.predictor.stream(((n, src) for _, n, src in todo), keep_raw=coco)
        for (i, _, _), pred in zip(todo, preds, strict=True):
            out[i] = record = result_record(pred.result, items[i][1])
            if coco and pred.error is None:  # as predict journals them for the COCO writer
                record[SCORES_KEY] = component_scores(pred.result, pred.raw, gate_mode)
        return [r for r in out if r is not None]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [json.dumps(self.records(json.loads(str(s)))) for s in batch["items"]]
        return {"chunk": np.asarray(batch["chunk"]), "records": np.asarray(records, dtype=object)}


# --------------------------------------------------------------------------- the driver
@dataclass
class PoolOptions:
    """Where and how wide: the cluster address and the actor pool's shape."""

    address: str = "auto"  # "auto": RAY_ADDRESS or a running local cluster; "local": start one
    actors: int | None = None  # default: as many as the cluster's CPUs (GPUs) allow
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


def connect(address: str) -> dict[str, float]:
    """Connect this process to Ray (``local`` starts a private instance); returns the cluster's
    resources. :class:`BatchError` names the address when no cluster answers."""
    try:
        import ray
    except ImportError:
        raise BatchError(f"this needs Ray, which is not installed: {RAY_EXTRA_HINT}") from None
    import logging

    if not ray.is_initialized():
        try:
            ray.init(
                address=None if address == "local" else address,
                logging_level=logging.WARNING,
                log_to_driver=False,  # actor output stays in the session logs on the nodes
                configure_logging=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BatchError(
                f"cannot connect to a Ray cluster at {address!r} ({exc}); start one with "
                "`ray start --head`, pass its address with --ray HOST:PORT, or --ray local to "
                "start one inside this command"
            ) from None
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def pool_size(resources: dict[str, float], pool: PoolOptions) -> tuple[int, str | None]:
    """Actors to start, and a note when the cluster cannot hold them all now."""
    fits = [resources.get("CPU", 0.0) / pool.cpus_per_actor] if pool.cpus_per_actor > 0 else []
    if pool.gpus_per_actor > 0:
        fits.append(resources.get("GPU", 0.0) / pool.gpus_per_actor)
    room = int(min(fits)) if fits else 1
    if pool.actors is None:
        return max(1, room), None
    if pool.actors > room:
        return pool.actors, (
            f"{pool.actors} actors of {pool.cpus_per_actor:g} CPU and {pool.gpus_per_actor:g} "
            f"GPU need more than the cluster has now ({resources.get('CPU', 0):g} CPU, "
            f"{resources.get('GPU', 0):g} GPU); Ray waits for nodes to join"
        )
    return pool.actors, None


def chunk_rows(items: list[BatchItem], batch_size: int, first: int) -> list[dict[str, Any]]:
    """Rows of ``batch_size`` consecutive images aligned at input 0, from chunk ``first`` on."""
    rows = []
    for k in range(first, math.ceil(len(items) / batch_size)):
        part = items[k * batch_size : (k + 1) * batch_size]
        items_json = json.dumps([[it.image_id, it.source, it.location] for it in part])
        rows.append({"chunk": k, "items": items_json})
    return rows


def ray_records(
    items: list[BatchItem],
    files: dict[str, bytes],
    config: ActorConfig,
    pool: PoolOptions,
    start: int = 0,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(input index, record)`` for every input from ``start`` on, in input order, computed by
    an actor pool on the connected cluster (call :func:`connect` first)."""
    import ray
    import ray.data

    first = start // config.batch_size
    rows = chunk_rows(items, config.batch_size, first)
    if not rows:
        return
    _quiet_ray_data()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # chunks reach the driver in input order
    ctx.enable_progress_bars = False  # the command draws its own
    size, _ = pool_size({k: float(v) for k, v in ray.cluster_resources().items()}, pool)
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
    ds = ds.map_batches(
        InferenceActor,
        fn_constructor_args=(files, config),
        batch_size=1,  # one chunk (one forward pass) per call
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor or None,
        # Ray Data's defaults for actor pools (ActorPoolMapOperator), relied on here:
        # max_restarts=-1 (a killed actor comes back) and max_task_retries=-1 (its unfinished
        # chunks are retried); passing them explicitly is deprecated since Ray 2.60.
    )
    expected = first
    try:
        for row in ds.iter_rows():
            chunk = int(row["chunk"])
            if chunk != expected:
                raise BatchError(f"Ray returned chunk {chunk} where {expected} was expected")
            expected += 1
            for j, record in enumerate(json.loads(str(row["records"]))):
                index = chunk * config.batch_size + j
                if index >= start:
                    yield index, record
    except ray.exceptions.RayError as exc:
        raise BatchError(f"the Ray job failed: {_first_line(exc)}") from exc
    if expected != first + len(rows):
        raise BatchError(f"Ray returned {expected - first} of {len(rows)} chunks")


def _quiet_ray_data() -> None:
    """Ray Data's per-run INFO lines and its note that we draw our own progress bar are noise
    on a command line; its warnings (retries, dead actors) still show."""
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _first_line(exc: BaseException) -> str:
    """The useful line of a Ray error (its message repeats the remote traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    tail = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^"))]
    return (tail[-1] if tail else type(exc).__name__)[:500]
