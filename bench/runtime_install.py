"""Installed size and start-up time of the runtime alone (`pip install steelscan`) against the full
install (`pip install "steelscan[train]"`).

Creates two fresh virtual environments, installs this checkout into each (packages come from the
registry, torch from pip's cache or the local disk), then times, as whole processes, median of
``--runs``: ``steelscan --version`` (the CLI's import cost) and one ``steelscan predict`` of one
1600x256 image on an exported bundle (start-up to first result) with the openvino engine in both
environments and with the torch engine in the full one. The bundle is a small untrained model
made in the full environment (mechanics, not skill: start-up does not depend on the weights).

    python bench/runtime_install.py [--workdir /tmp/steelscan-install] [--runs 5] [--write-doc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_name, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Runtime install: size and start-up"

MAKE_BUNDLE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
from tiny_models import tiny_bundle
from steelscan.inference.export import export_bundle
out = Path(sys.argv[2])
export_bundle(tiny_bundle(out / "model"), out / "model-onnx")
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 255, (256, 1600), dtype=np.uint8)).save(out / "strip.png")
"""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_venv(path: Path, spec: str) -> float:
    """A fresh venv with ``spec`` installed; returns the install's wall seconds."""
    if path.exists():
        shutil.rmtree(path)
    sh([sys.executable, "-m", "venv", str(path)])
    t0 = time.perf_counter()
    sh([str(path / "bin" / "python"), "-m", "pip", "install", "-q", spec], timeout=3600)
    return time.perf_counter() - t0


def size_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 2**20


def median_seconds(cmd: list[str], runs: int) -> float:
    sh(cmd)  # warm-up (page cache)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sh(cmd)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16"]
                return " ".join(f for f in keep if f in flags) or "none of avx2/avx512"
    except OSError:
        pass
    return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/steelscan-install"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write-doc", action="store_true", help="record in docs/benchmarks.md")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    envs = {"runtime": work / "runtime", "full": work / "full"}
    install_s = {
        "runtime": make_venv(envs["runtime"], str(REPO)),
        "full": make_venv(envs["full"], f"{REPO}[train]"),
    }
    sizes = {k: size_mb(v) for k, v in envs.items()}
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    sh([str(envs["full"] / "bin" / "python"), "-c", MAKE_BUNDLE, str(REPO / "tests"), str(data)])

    def cli(env: str, *argv: str) -> list[str]:
        return [str(envs[env] / "bin" / "steelscan"), *argv]

    def predict(env: str, engine: str) -> list[str]:
        return cli(
            env,
            "predict",
            str(data / "model-onnx"),
            str(data / "strip.png"),
            "--out",
            str(work / f"out-{env}-{engine}"),
            "--engine",
            engine,
            "--device",
            "cpu",
        )

    rows = {
        "steelscan --version": {
            "runtime": median_seconds(cli("runtime", "--version"), args.runs),
            "full": median_seconds(cli("full", "--version"), args.runs),
        },
        "predict 1 image, openvino": {
            "runtime": median_seconds(predict("runtime", "openvino"), args.runs),
            "full": median_seconds(predict("full", "openvino"), args.runs),
        },
        "predict 1 image, torch": {
            "runtime": None,
            "full": median_seconds(predict("full", "torch"), args.runs),
        },
    }
    lines = [
        SECTION,
        "",
        f"Command: `python bench/runtime_install.py --runs {args.runs} --write-doc`. Machine: "
        f"{cpu_name()}, {os.cpu_count()} cores, CPU flags: {cpu_flags()}. Two fresh venvs, "
        "this checkout installed into each; times are whole processes, median of "
        f"{args.runs} after a warm-up; the image is a synthetic 1600x256 PNG and the bundle a "
        "small untrained model (start-up does not depend on the weights).",
        "",
        "| | runtime (`pip install steelscan`) | full (`steelscan[train]`) | runtime / full |",
        "| --- | ---: | ---: | ---: |",
        f"| installed size (MiB) | {sizes['runtime']:,.0f} | {sizes['full']:,.0f} | "
        f"{sizes['runtime'] / sizes['full']:.2f} |",
        f"| install time (s) | {install_s['runtime']:.0f} | {install_s['full']:.0f} | "
        f"{install_s['runtime'] / install_s['full']:.2f} |",
    ]
    for name, row in rows.items():
        rt, full = row["runtime"], row["full"]
        ratio = f"{rt / full:.2f}" if rt is not None else "-"
        rts = f"{rt:.2f}" if rt is not None else "not installed"
        lines.append(f"| {name} (s) | {rts} | {full:.2f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_doc:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
