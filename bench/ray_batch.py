"""`steelscan batch` on a Ray cluster of one node and of two, against plain `steelscan predict`.

Starts a real Ray cluster on this machine with the `ray` CLI (a head, later a second node, one
CPU each), runs the same job on it with one node and with two, and runs `steelscan predict` on
the same images with the same engine and batch size: once on all of this machine's cores and
once pinned to one CPU (`taskset`, the compute of one actor). Every figure is a whole process
(start-up, connecting, starting the actors, loading the bundle, every output written), the
median of ``--runs`` runs after a warm-up, at two job sizes (``--copies`` and three times as
many): the difference gives the throughput once running, the rest the fixed cost of a job.
Outputs are checked equal to the local run's.

    python bench/ray_batch.py [--model BUNDLE] [--images DIR] [--copies 4] [--runs 3]
        [--write-doc]

Without ``--model`` it exports the tests' tiny two-stage bundle to ONNX (the training extra is
needed for that). Images are the real Severstal JPEGs, each linked ``--copies`` times under new
ids so the job is long enough to measure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import cpu_name, write_section  # noqa: E402
from runtime_install import cpu_flags  # noqa: E402

SECTION = "## Batch inference on Ray: one node, two nodes, and plain predict"
STEELSCAN = str(Path(sys.executable).with_name("steelscan"))
RAY = str(Path(sys.executable).with_name("ray"))
OPTIONS = ["--engine", "onnx", "--batch-size", "2"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
ENV.pop("RAY_ADDRESS", None)


def tiny_model(root: Path) -> Path:
    """The tests' tiny real bundle, exported to ONNX (so actors need no torch)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tiny_models import tiny_bundle

    from steelscan.inference.export import export_bundle

    return export_bundle(tiny_bundle(root / "model"), root / "model-onnx")


def linked_images(src: Path, dst: Path, copies: int) -> int:
    dst.mkdir(parents=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for k in range(copies):
        for p in files:
            (dst / f"c{k}-{p.name}").symlink_to(p.resolve())
    return copies * len(files)


# -- a cluster on this machine, stopped by the session ids of the processes we started --------
def start_node(args: list[str], log: Path, cpu: int) -> subprocess.Popen:
    """A node of one CPU pinned to core ``cpu`` (its workers inherit the affinity), so one node
    computes on one core, as `taskset -c 0 steelscan predict` does."""
    cmd = ["taskset", "-c", str(cpu), RAY, "start", *args, "--num-cpus", "1"]
    cmd += ["--object-store-memory", str(200 << 20)]
    cmd += ["--disable-usage-stats", "--block"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while "block forever" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ray start failed:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return proc


def wait_for_cpus(address: str, cpus: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(
            [RAY, "status", "--address", address], capture_output=True, text=True, env=ENV
        ).stdout
        if f"/{cpus:.1f} CPU" in out:
            return
        time.sleep(0.5)
    raise SystemExit(f"the cluster never reached {cpus} CPUs")


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    sessions = {p.pid for p in nodes}
    for p in reversed(nodes):
        if p.poll() is None:
            p.terminate()
    time.sleep(3)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            sid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            continue
        if sid in sessions:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in nodes:
        p.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- timing ----------------------------------------------------------------------------------
def timed(cmd: list[str], out: Path) -> float:
    """Wall seconds of one whole process."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took


@dataclass
class Fit:
    """One configuration at two job sizes: ``wall = fixed + images / rate``."""

    walls: tuple[float, float]  # median wall seconds at the small and the large job
    sizes: tuple[int, int]

    @property
    def rate(self) -> float:
        """Images per second once running (the marginal cost of an image)."""
        return (self.sizes[1] - self.sizes[0]) / max(1e-9, self.walls[1] - self.walls[0])

    @property
    def fixed(self) -> float:
        """Seconds paid once per job: start-up, connecting, actors, loading, writing."""
        return self.walls[0] - self.sizes[0] / self.rate


def fit(
    make: Callable[[Path, Path], list[str]], jobs: list[tuple[Path, int]], out: Path, runs: int
) -> Fit:
    """Median wall time of ``runs`` runs at each job size, after one warm-up run."""
    timed(make(jobs[0][0], out), out)
    walls = tuple(
        statistics.median(timed(make(images, out), out) for _ in range(runs)) for images, _ in jobs
    )
    return Fit(walls, (jobs[0][1], jobs[1][1]))  # type: ignore[arg-type]


def same_outputs(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in ("submission.csv",))


def measure(args: argparse.Namespace, tmp: Path, model: Path, jobs: list[tuple[Path, int]]) -> dict:
    """Every configuration's :class:`Fit`, and whether the Ray outputs equal the local ones."""

    def predict(images: Path, out: Path) -> list[str]:
        return [STEELSCAN, "predict", str(model), str(images), "--out", str(out), *OPTIONS]

    res: dict = {"local": fit(predict, jobs, tmp / "local", args.runs)}
    res["pinned"] = fit(
        lambda i, o: ["taskset", "-c", "0", *predict(i, o)], jobs, tmp / "pinned", args.runs
    )
    port = free_port()
    address = f"127.0.0.1:{port}"

    def batch(images: Path, out: Path) -> list[str]:
        return [STEELSCAN, "batch", str(model), str(images), "--out", str(out), "--ray", address]

    temp_dir = Path(tempfile.mkdtemp(prefix="ssray-", dir="/tmp"))
    nodes: list[subprocess.Popen] = []
    try:
        head = ["--head", "--port", str(port), "--include-dashboard=false"]
        nodes.append(start_node([*head, "--temp-dir", str(temp_dir)], temp_dir / "head.log", 0))
        wait_for_cpus(address, 1)
        res["ray1"] = fit(lambda i, o: [*batch(i, o), *OPTIONS], jobs, tmp / "ray1", args.runs)
        equal = same_outputs(tmp / "ray1", tmp / "local")
        nodes.append(start_node(["--address", address], temp_dir / "node.log", 1))
        wait_for_cpus(address, 2)
        res["ray2"] = fit(lambda i, o: [*batch(i, o), *OPTIONS], jobs, tmp / "ray2", args.runs)
        res["equal"] = equal and same_outputs(tmp / "ray2", tmp / "local")
    finally:
        stop_nodes(nodes)
        shutil.rmtree(temp_dir, ignore_errors=True)
    return res


def report(args: argparse.Namespace, res: dict, sizes: tuple[int, int], model_label: str) -> str:
    rows = [
        ("local", "`steelscan predict` (all cores; ONNX Runtime uses 2 threads here)"),
        ("pinned", "`taskset -c 0 steelscan predict` (one core: one actor's compute)"),
        ("ray1", "`steelscan batch --ray ADDR`, 1 node (pinned to core 0), 1 actor"),
        ("ray2", "`steelscan batch --ray ADDR`, 2 nodes (cores 0 and 1), 2 actors"),
    ]
    small, large = sizes
    lines = [
        SECTION,
        "",
        f"Command: `python bench/ray_batch.py --copies {args.copies} --runs {args.runs}"
        + (f" --model {args.model}" if args.model else "")
        + " --write-doc`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU flags: {cpu_flags()}; 1-minute "
        f"load average at the end: {os.getloadavg()[0]:.1f} (a shared machine)  ",
        f"Jobs: {small} and {large} images (the real Severstal JPEGs, each under several ids), "
        f"model {model_label}, `{' '.join(OPTIONS)}`; both Ray nodes on this machine, started "
        f"with `ray start`, each pinned to one core. Whole processes, median of {args.runs} runs "
        "after a warm-up. From the two sizes, `wall = fixed + images / rate`: *rate* is the "
        "throughput once running, *fixed* what a job pays once (start-up, connecting, starting "
        "actors and loading the model on them, assembling the outputs).  ",
        f"Outputs of both Ray runs equal to the local run's: {'yes' if res['equal'] else 'NO'}",
        "",
        f"| run | wall s, {small} images | wall s, {large} images | rate img/s | fixed s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in rows:
        f = res[key]
        lines.append(
            f"| {label} | {f.walls[0]:.1f} | {f.walls[1]:.1f} | {f.rate:.2f} | {f.fixed:.1f} |"
        )
    r1, r2, pin, loc = (res[k] for k in ("ray1", "ray2", "pinned", "local"))
    lines += [
        "",
        f"Two nodes against one: **{r2.rate / r1.rate:.2f}x** the throughput "
        f"({r1.rate:.2f} to {r2.rate:.2f} img/s). Ray against `predict` on the same compute (one "
        f"core): {r1.rate / pin.rate:.2f}x its throughput (the actor runs the model inline, "
        "without predict's decode and post-process threads) and "
        f"**{r1.fixed - pin.fixed:+.1f} s** of fixed cost per job ({r1.fixed:.1f} s against "
        f"{pin.fixed:.1f} s). Two 1-core nodes against `predict` on the whole machine: "
        f"{r2.rate / loc.rate:.2f}x its throughput.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="an exported bundle (default: the tiny one)")
    shared = HERE.parent.parent / "shared" / "data" / "severstal" / "images"
    ap.add_argument("--images", type=Path, default=shared)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    if not args.images.is_dir() or not Path(RAY).is_file():
        print(f"skip: {args.images} or the ray CLI ({RAY}) not found")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="steelscan-ray-bench-"))
    try:
        model = args.model or tiny_model(tmp / "model")
        label = str(args.model) if args.model else "the tests' tiny ResUNet + MobileNetV3 (ONNX)"
        jobs = [
            (tmp / "small", linked_images(args.images, tmp / "small", args.copies)),
            (tmp / "large", linked_images(args.images, tmp / "large", 3 * args.copies)),
        ]
        res = measure(args, tmp, model, jobs)
        text = report(args, res, (jobs[0][1], jobs[1][1]), label)
        print(text)
        if args.write_doc:
            write_section(SECTION, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
