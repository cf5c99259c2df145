"""``steelscan batch`` on a real Ray cluster: a head and a second node started with the ``ray`` CLI
on this machine (one CPU each), jobs over the real Severstal images, compared with a local
``steelscan predict`` run of the same inputs and options.

* the same outputs: submission.csv, errors.csv and the COCO files byte for byte,
  predictions.jsonl line by line without ``timings_ms`` (a measurement of the process, not a
  result), the same journal identity;
* an actor worker process SIGKILLed mid-job: Ray restarts it and retries its chunks, and the job
  ends with every image once, equal to the local run;
* the driver SIGKILLed mid-job: the same command continues from the journal, same outputs;
* a Parquet manifest, a CSV manifest of relative paths and a ``file://`` folder (pyarrow.fs) read
  the same images.

The cluster's processes are found by the session ids of the ``ray start --block`` processes this
module started, and only those are ever signalled."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tiny_models import tiny_bundle

from steelscan.inference.journal import JOURNAL_DIR, RUN_FILE

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
ACTOR_TITLE = "ray::MapWorker(MapBatches(InferenceActor"
# The cluster, the driver and the tools get a HOME of their own: a token left in the user's
# ~/.ray/auth_token (by `ray get-auth-token --generate`, say) makes nodes refuse each other.
RAY_HOME = Path(tempfile.mkdtemp(prefix="steelscan-ray-home-"))
ENV = {
    **os.environ,
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
    "HOME": str(RAY_HOME),
}
ENV.pop("RAY_ADDRESS", None)
COPIES = ("a", "b")  # each real image twice under two ids: a job long enough to interrupt

pytestmark = pytest.mark.timeout(600)


# -- the cluster -------------------------------------------------------------------------------
@dataclass
class Cluster:
    """Two nodes booting in a thread (while the model is exported and the local reference
    runs); :meth:`ready` waits for them."""

    address: str
    temp_dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)
    boot: threading.Thread | None = None
    error: BaseException | None = None

    @property
    def sessions(self) -> set[int]:
        return {p.pid for p in self.nodes}  # each `ray start` leads its own session

    def ready(self) -> str:
        if self.boot is not None:
            self.boot.join()
        if self.error is not None:
            raise RuntimeError(f"the Ray cluster did not start: {self.error}")
        return self.address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # fields after comm: state ppid pgrp session


def _processes(sessions: set[int]) -> Iterator[tuple[int, str]]:
    """``(pid, command line)`` of every live process in ``sessions``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_of(int(entry.name)) in sessions:
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            yield int(entry.name), cmd.strip()


def _start_node(args: list[str], log: Path, ready: str, timeout: float = 90) -> subprocess.Popen:
    """``ray start ... --block`` in a new session; returns once its log says it is up."""
    cmd = [str(RAY), "start", *args, "--num-cpus", "1", "--object-store-memory", str(200 << 20)]
    cmd += ["--disable-usage-stats", "--block"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return proc


def _wait_for_cpus(address: str, cpus: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    want = f"/{cpus:.1f} CPU"
    while time.monotonic() < deadline:
        out = subprocess.run(
            [str(RAY), "status", "--address", address], capture_output=True, text=True, env=ENV
        ).stdout
        if want in out:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the cluster at {address} never reached {cpus} CPUs")


def _stop(cluster: Cluster) -> None:
    """SIGTERM each node's `ray start`, then SIGKILL whatever is left in their sessions."""
    for proc in reversed(cluster.nodes):
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(p.poll() is None for p in cluster.nodes):
        time.sleep(0.2)
    for _ in range(3):
        left = [pid for pid, _ in _processes(cluster.sessions)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not left:
            break
        time.sleep(0.5)
    for proc in cluster.nodes:
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """A head and a second node on this machine, one CPU each, stopped at the end."""
    pytest.importorskip("ray", reason='ray is not installed (pip install "steelscan[ray]")')
    if not RAY.is_file():
        pytest.skip(f"the ray CLI is not beside {sys.executable}")
    # Short: Ray's unix socket paths under the temp dir must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ssray-", dir="/tmp"))
    port = _free_port()
    cluster = Cluster(f"127.0.0.1:{port}", temp_dir)

    def boot() -> None:
        try:
            head = ["--head", "--port", str(port), "--include-dashboard=false"]
            head += ["--temp-dir", str(temp_dir)]
            cluster.nodes.append(_start_node(head, temp_dir / "head.log", "block forever"))
            node = ["--address", cluster.address]
            cluster.nodes.append(_start_node(node, temp_dir / "node.log", "block forever"))
            _wait_for_cpus(cluster.address, 2)
        except BaseException as exc:  # noqa: BLE001 - re-raised by ready() in the test
            cluster.error = exc

    cluster.boot = threading.Thread(target=boot, daemon=True)
    cluster.boot.start()
    try:
        yield cluster
    finally:
        cluster.boot.join()
        _stop(cluster)
        shutil.rmtree(temp_dir, ignore_errors=True)


# -- the job -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny real bundle exported to ONNX: the actors need no torch."""
    from steelscan.inference.export import export_bundle

    root = tmp_path_factory.mktemp("raymodel")
    return export_bundle(tiny_bundle(root / "model"), root / "model-onnx")


@pytest.fixture(scope="module")
def images(severstal_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A folder with every real image under two ids (symlinks), and a folder with one image no
    decoder reads (every run ends with exit 1 and an errors.csv row)."""
    root = tmp_path_factory.mktemp("rayimages")
    many, bad = root / "many", root / "bad"
    many.mkdir()
    bad.mkdir()
    for src in sorted((severstal_dir / "images").glob("*.jpg")):
        for tag in COPIES:
            (many / f"{tag}-{src.name}").symlink_to(src)
    (bad / "zz-broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG" * 20)
    return many, bad


OPTIONS = ["--engine", "onnx", "--batch-size", "2", "--format", "csv,jsonl,coco"]
TABLES = ("submission.csv", "errors.csv", "coco_results.json", "coco_images.json")


def _steelscan(*args: object) -> list[str]:
    return [sys.executable, "-m", "steelscan", *map(str, args)]


def _batch(model: Path, inputs: list, out: Path, cluster: Cluster) -> list[str]:
    return _steelscan("batch", model, *inputs, "--out", out, "--ray", cluster.ready(), *OPTIONS)


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def reference(model, images, tmp_path_factory) -> Path:
    """A local `steelscan predict` of the same inputs with the same options."""
    out = tmp_path_factory.mktemp("rayref") / "out"
    proc = _run(_steelscan("predict", model, *images, "--out", out, *OPTIONS))
    assert proc.returncode == 1, proc.stderr  # the broken image
    return out


def _records(out: Path, drop: tuple[str, ...] = ("timings_ms",)) -> list[dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def _assert_same_outputs(out: Path, ref: Path) -> None:
    for name in TABLES:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    got = _records(out)
    assert got == _records(ref)
    ids = [r["image_id"] for r in got]
    assert len(ids) == len(set(ids)) == 2 * 15 + 1  # every input exactly once


def _journaled(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (out / JOURNAL_DIR).glob("seg-*.jsonl"))


def _start_and_wait(cmd: list[str], out: Path, log: Path, results: int) -> subprocess.Popen:
    """Start ``cmd`` and return once the journal holds ``results`` results."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + 240
    while _journaled(out) < results if (out / JOURNAL_DIR).is_dir() else True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    return proc


def _actors(cluster: Cluster) -> list[int]:
    return [pid for pid, cmd in _processes(cluster.sessions) if cmd.startswith(ACTOR_TITLE)]


# -- the tests -----------------------------------------------------------------------------------
def test_batch_on_two_nodes_equals_local_predict(ray_cluster, model, images, reference, tmp_path):
    out = tmp_path / "out"
    proc = _run(_batch(model, list(images), out, ray_cluster))
    assert proc.returncode == 1, proc.stderr
    assert "ray: 2 actor(s) of 1 CPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_same_outputs(out, reference)
    # The same journal identity: `steelscan predict` could finish a batch job and vice versa.
    run = json.loads((out / JOURNAL_DIR / RUN_FILE).read_text())
    assert run == json.loads((reference / JOURNAL_DIR / RUN_FILE).read_text())


def test_killed_actor_is_retried_and_nothing_is_lost_or_doubled(
    ray_cluster, model, images, reference, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    many, bad = images
    listed = sorted(many.iterdir()) + sorted(bad.iterdir())
    manifest = tmp_path / "manifest.parquet"
    table = {"image_id": [p.name for p in listed], "path": [str(p) for p in listed]}
    pq.write_table(pa.table(table), manifest)
    out = tmp_path / "out"
    proc = _start_and_wait(_batch(model, [manifest], out, ray_cluster), out, tmp_path / "log", 1)
    actors = _actors(ray_cluster)  # at least the one that returned the first chunk
    assert actors, "no actor process found"
    at_kill = _journaled(out)
    os.kill(actors[0], signal.SIGKILL)
    assert proc.wait(timeout=240) == 1, (tmp_path / "log").read_text()
    assert at_kill < 2 * 15 + 1  # the kill came mid-job
    _assert_same_outputs(out, reference)


def test_killed_driver_is_resumed_by_the_same_command(
    ray_cluster, model, images, reference, tmp_path
):
    many, bad = images
    rows = [f"many/{p.name}" for p in sorted(many.iterdir())] + ["bad/zz-broken.jpg"]
    manifest = many.parent / "resume-manifest.csv"  # paths relative to the manifest's folder
    manifest.write_text("path\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    cmd = _batch(model, [manifest], out, ray_cluster)
    proc = _start_and_wait(cmd, out, tmp_path / "log", 5)
    proc.kill()
    proc.wait(timeout=60)
    done = _journaled(out)
    deadline = time.monotonic() + 60  # the dead driver's actors go with it
    while _actors(ray_cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    again = _run(cmd)
    assert again.returncode == 1, again.stderr
    assert f"resuming: {done} of {2 * 15 + 1} images already inspected" in again.stderr
    _assert_same_outputs(out, reference)


def test_a_uri_folder_is_read_through_pyarrow_fs(ray_cluster, model, images, reference, tmp_path):
    many, _ = images
    out = tmp_path / "out"
    proc = _run(_batch(model, [many.as_uri()], out, ray_cluster))
    assert proc.returncode == 0, proc.stderr
    assert (out / "submission.csv").read_bytes() == (reference / "submission.csv").read_bytes()
    got = _records(out, ("timings_ms", "path"))
    want = [r for r in _records(reference, ("timings_ms", "path")) if r["error"] is None]
    assert got == want
    uris = {f"{many.as_uri()}/{p.name}" for p in many.iterdir()}
    assert {r["path"] for r in _records(out)} == uris


# -- without a cluster: inputs and the missing extra ----------------------------------------------
def test_manifests_csv_and_parquet_name_images_by_path_or_uri(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from steelscan.data.records import DataError
    from steelscan.inference.distributed import (
        chunk_rows,
        is_manifest,
        read_manifest,
        resolve_batch_inputs,
    )

    (tmp_path / "imgs").mkdir()
    csv = tmp_path / "list.csv"
    csv.write_text("ImageId,Path\nx1,imgs/a.jpg\nx2,\nx3,file:///data/b%20c.jpg\nx1,imgs/d.jpg\n")
    items, missing = read_manifest(csv)
    assert [(i.image_id, i.source) for i in items] == [
        ("x1", str(tmp_path / "imgs" / "a.jpg")),  # relative: from the manifest's folder
        ("x3", "file:///data/b%20c.jpg"),
        ("x1", str(tmp_path / "imgs" / "d.jpg")),
    ]
    assert missing == [(f"{csv}:3", "no image path or URI in this row")]
    resolved = resolve_batch_inputs([csv])
    assert [i.image_id for i in resolved.images] == ["x1", "x3"]  # each id once, first wins
    assert "already taken" in resolved.notes[0]

    pq.write_table(pa.table({"uri": ["s3://bucket/k/p%201.jpg"]}), tmp_path / "m.parquet")
    items, _ = read_manifest(tmp_path / "m.parquet")
    assert [(i.image_id, i.source) for i in items] == [("p 1.jpg", "s3://bucket/k/p%201.jpg")]

    ids = tmp_path / "ids.csv"  # a CSV of ImageIds is predict's kind of input, not a manifest
    ids.write_text("ImageId\na.jpg\n")
    assert is_manifest(str(csv)) and not is_manifest(str(ids))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": ["a.jpg"]}), bad)
    with pytest.raises(DataError, match="needs a column naming each image"):
        read_manifest(bad)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path\nimgs/\xe9.jpg\n".encode("latin-1"))
    assert not is_manifest(str(latin))  # not UTF-8: left to predict's CSV reader (one line)

    rows = chunk_rows(items * 5, batch_size=2, first=1)  # the batches of a local run
    assert [r["chunk"] for r in rows] == [1, 2]


def test_without_the_ray_extra_batch_says_how_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    from steelscan.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'pip install "steelscan[ray]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
