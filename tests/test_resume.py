"""Resumable, exactly-once ``steelscan predict``: a real process killed with SIGKILL at random
points and resumed ends with the outputs of an uninterrupted run; another run against the
journal is refused (exit 2) unless ``--restart``; a torn journal line is ignored.

Outputs are compared byte for byte (submission.csv, errors.csv, every overlay PNG) and
predictions.jsonl line by line with ``timings_ms`` removed: the only field that is a measurement
of the process that inspected the image, not a result (docs/inference.md, "Resuming a killed
run")."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import tiny_bundle

from steelscan.cli import main
from steelscan.inference.journal import JOURNAL_DIR, LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
FINALS = ("submission.csv", "predictions.jsonl", "errors.csv")
IMAGES = ["0a1cade03.jpg", "03db6bbc3.jpg", "000a4bcdd.jpg", "0a21ce787.jpg", "0a26aceb2.jpg"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained but real bundle; resuming is mechanics, not skill."""
    return tiny_bundle(tmp_path_factory.mktemp("resume") / "model")


@pytest.fixture(scope="module")
def inputs(severstal_dir, tmp_path_factory) -> list[Path]:
    """The real Severstal JPEGs, the re-encoded set (a labelled folder: overlays show the truth)
    and a folder with one unreadable image, so every run ends with exit 1 and an errors.csv row."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "zz-broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG" * 20)
    return [severstal_dir / "images", severstal_dir / "reencoded", bad]


def _command(model: Path, inputs: list[Path], out: Path) -> list[str]:
    args = ["predict", model, *inputs, "--out", out, "--overlays", "--engine", "torch"]
    args += ["--batch-size", "1", "--device", "cpu"]
    return [sys.executable, "-m", "steelscan", *map(str, args)]


@pytest.fixture(scope="module")
def reference(model, inputs, tmp_path_factory) -> tuple[Path, int]:
    """An uninterrupted run (a subprocess like the killed ones): its folder and exit status."""
    out = tmp_path_factory.mktemp("reference") / "out"
    proc = subprocess.run(
        _command(model, inputs, out), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode in (0, 1), proc.stderr
    return out, proc.returncode


def _journaled(out: Path) -> int:
    """Results the journal holds (whole lines; each input is journaled once)."""
    return sum(p.read_bytes().count(b"\n") for p in (out / JOURNAL_DIR).glob("seg-*.jsonl"))


def _records(out: Path) -> list[dict]:
    """predictions.jsonl without the per-process timings."""
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("timings_ms", None)
    return rows


def _assert_same_outputs(out: Path, ref: Path) -> None:
    for name in ("submission.csv", "errors.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    got, want = _records(out), _records(ref)
    assert got == want
    ids = [r["image_id"] for r in got]
    assert len(ids) == len(set(ids))  # every input exactly once
    pngs = sorted(p.name for p in (ref / "overlays").glob("*.png"))
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == pngs
    for name in pngs:
        assert (out / "overlays" / name).read_bytes() == (ref / "overlays" / name).read_bytes()


def _assert_nothing_partial(out: Path, ref: Path) -> None:
    """At a kill point: a final name is absent or holds the complete final file."""
    for name in FINALS:
        if (out / name).exists():
            assert (out / name).read_bytes() == (ref / name).read_bytes() or (
                name == "predictions.jsonl" and _records(out) == _records(ref)
            ), name
    for p in (out / "overlays").glob("*.png") if (out / "overlays").is_dir() else ():
        assert p.read_bytes() == (ref / "overlays" / p.name).read_bytes(), p.name


def _kill_at(cmd: list[str], out: Path, log: Path, delay: float | None, results: int) -> int:
    """Start ``cmd``; SIGKILL it after ``delay`` seconds, or once the journal holds ``results``."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + (delay if delay is not None else 120.0)
    while proc.poll() is None and time.monotonic() < deadline:
        if delay is None and _journaled(out) >= results:
            break
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


def test_killed_at_random_points_then_resumed_equals_an_uninterrupted_run(
    model, inputs, reference, tmp_path, capsys
):
    ref, ref_code = reference
    n = len(_records(ref))
    rng = random.Random(12)
    out = tmp_path / "out"
    cmd = _command(model, inputs, out)
    # one kill after a random delay (at start-up or among the first results), then two each
    # after a random number of new results
    delays: list[float | None] = [rng.uniform(0.5, 5.0), None, None]
    before = 0
    for k, delay in enumerate(delays):
        log = tmp_path / f"run{k}.log"
        code = _kill_at(cmd, out, log, delay, before + rng.randint(2, 9))
        assert code == -signal.SIGKILL, log.read_text()
        now = _journaled(out)
        assert before <= now < n  # nothing journaled is lost; the run was cut short
        if before:
            assert f"resuming: {before} of {n} images" in log.read_text()
        _assert_nothing_partial(out, ref)
        before = now
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == ref_code, proc.stderr
    assert f"resuming: {before} of {n} images" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_same_outputs(out, ref)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temp file left

    # the finished folder again: nothing redone, nothing rewritten, the same exit status
    stamps = {name: (out / name).stat().st_mtime_ns for name in FINALS}
    capsys.readouterr()
    assert _run(cmd[3:]) == ref_code
    assert "nothing to do: all" in capsys.readouterr().err
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in FINALS}


def _run(argv: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def _small(model: Path, files: list[Path], out: Path, *extra: str) -> list:
    return ["predict", model, *files, "--out", out, "--engine", "torch", *extra]


def test_another_run_against_the_journal_is_exit_2_unless_restart(
    model, severstal_dir, tmp_path, capsys
):
    from steelscan.bundle import read_manifest, update_manifest

    files = [severstal_dir / "images" / name for name in IMAGES[:3]]
    out = tmp_path / "out"
    assert _run(_small(model, files, out, "--batch-size", "1")) == 0
    first = (out / "submission.csv").read_bytes()
    changed = tmp_path / "model2"
    shutil.copytree(model, changed)
    pp = read_manifest(changed).postprocess.model_copy(update={"pixel_thresholds": [0.6] * 4})
    update_manifest(changed, postprocess=pp)
    cases = [
        (_small(model, files, out, "--batch-size", "1", "--gate", "none"), "--gate was unset"),
        (_small(model, files, out, "--batch-size", "2"), "--batch-size was 1, now 2"),
        (_small(changed, files, out, "--batch-size", "1"), "manifest differs (postprocess)"),
        (_small(model, files[:2], out, "--batch-size", "1"), "the inputs differ"),
        (_small(model, files[::-1], out, "--batch-size", "1"), "other ids, paths or order"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert _run(argv) == 2, message
        err = capsys.readouterr().err
        assert message in err and "--restart" in err and "Traceback" not in err
        assert (out / "submission.csv").read_bytes() == first  # nothing touched
    capsys.readouterr()
    assert _run(_small(changed, files, out, "--batch-size", "1", "--restart")) == 0
    assert "resuming" not in capsys.readouterr().err  # started over
    assert (out / "submission.csv").read_bytes() != first  # the new thresholds' masks
    assert _run(_small(changed, files, out, "--batch-size", "1")) == 0
    assert "nothing to do" in capsys.readouterr().err

    # a second writer while one holds the folder is refused, and waits for nothing
    with open(out / JOURNAL_DIR / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _run(_small(changed, files, out, "--batch-size", "1")) == 2
        assert "being written by another steelscan predict" in capsys.readouterr().err


def test_a_torn_journal_line_is_redone_and_batches_are_kept(model, severstal_dir, tmp_path):
    """A power cut can leave half a line at the end of a segment: it is ignored, and the resume
    restarts at a batch boundary so every image shares its batch as in an uninterrupted run."""
    files = [severstal_dir / "images" / name for name in IMAGES]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _run(_small(model, files, ref, "--batch-size", "2", "--overlays")) == 0
    assert _run(_small(model, files, out, "--batch-size", "2", "--overlays")) == 0
    journal = out / JOURNAL_DIR
    (segment,) = journal.glob("seg-*.jsonl")
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # 3 whole + torn
    (journal / "done.json").unlink()
    for name in FINALS:
        (out / name).unlink()
    assert _run(_small(model, files, out, "--batch-size", "2", "--overlays")) == 0
    _assert_same_outputs(out, ref)
    second = sorted(journal.glob("seg-*.jsonl"))[-1]
    assert [json.loads(x)["i"] for x in second.read_text().splitlines()] == [3, 4]
