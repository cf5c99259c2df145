"""The journal that makes ``steelscan predict --out DIR`` resumable and exactly-once.

A batch job over an archive can be killed at any moment (SIGKILL, a power cut, a reboot); run
again with the same arguments it must continue where it stopped, never lose or double an image,
and end with the outputs an uninterrupted run writes. The journal is ``DIR/.steelscan-journal``:

``run.json``
    The run's identity, written durably (temp file, fsync, rename, fsync of the folder) before
    any result: the model (every manifest field and the sha256 of every bundle file), the
    options that change outputs, and a sha256 of the ordered input list. A later run with another
    identity is refused with what changed, unless it asks to start over (``restart``).
``seg-NNNNNN.jsonl``
    Finished results, one JSON line ``{"i": <input index>, "r": <predictions.jsonl record>}``
    each, in input order (with ``--format coco`` the record also carries ``component_scores``,
    what the COCO writer needs and predictions.jsonl leaves out). Every line is flushed to the
    OS as it is written (a killed process loses nothing it wrote) and fsynced every
    :data:`SYNC_EVERY` results or :data:`SYNC_SECONDS` (a power cut loses at most that much),
    after the overlays of those results were fsynced.
    Each process appends to a new segment, so a torn last line left by a kill is never extended;
    a line that is torn, unreadable or out of sequence is ignored and its input redone.
``done.json``
    Written once the final files were assembled from the journal and renamed into place.
``lock``
    Held (``flock``) by the one process writing DIR; the kernel releases it when that dies.

Results finish in input order, so what is journaled is always a prefix of the inputs and a resume
is "skip the first ``done``". Memory stays flat: segments are streamed, never loaded whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

try:  # POSIX; elsewhere a second writer is not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

JOURNAL_DIR = ".steelscan-journal"
RUN_FILE = "run.json"
DONE_FILE = "done.json"
LOCK_FILE = "lock"
FORMAT = 1
SYNC_EVERY = 64  # results between fsyncs of the journal ...
SYNC_SECONDS = 2.0  # ... or seconds, whichever comes first
_SEGMENT = re.compile(r"^seg-(\d{6,})\.jsonl$")


class JournalError(Exception):
    """The journal in DIR cannot be used for this run; the message says why and what to do."""


# -- durable small files ----------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make renames and new names in ``path`` durable (a rename is only in the folder's data)."""
    with contextlib.suppress(OSError):  # some filesystems cannot open or fsync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file already written (an overlay) to disk before the journal says it exists."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_json_durable(path: Path, data: Any) -> None:
    """Write JSON so that after a crash ``path`` is either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- what a run is ----------------------------------------------------------------------------
def model_identity(bundle_dir: Path, manifest: Any) -> dict[str, Any]:
    """Every manifest field (hashed one by one, so a change can be named) and the sha256 of every
    bundle file. Load already checked the files against ``manifest.files``; a bundle from before
    file hashes existed gets them computed here."""
    from steelscan.bundle import named_files, sha256_file

    fields = manifest.model_dump(mode="json")
    files = dict(fields.pop("files", None) or {})
    if not files:
        for name in named_files(manifest):
            if (bundle_dir / name).is_file():
                files[name] = sha256_file(bundle_dir / name)
    return {"fields": {k: _digest(v) for k, v in sorted(fields.items())}, "files": files}


def inputs_identity(
    images: Iterable[tuple[str, str, bool]], missing: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """Count and sha256 of the ordered inputs: ``(image_id, path, labelled)`` per image and the
    ids that could not be found. Image ids and paths are what the outputs name; contents are not
    hashed (an archive of millions would be read twice)."""
    h = hashlib.sha256()
    n = n_missing = 0
    for image_id, path, labelled in images:
        h.update(f"I\t{image_id}\t{path}\t{int(labelled)}\n".encode())
        n += 1
    for image_id, why in missing:
        h.update(f"M\t{image_id}\t{why}\n".encode())
        n_missing += 1
    return {"images": n, "missing": n_missing, "sha256": h.hexdigest()}


@dataclass
class RunIdentity:
    """What must be equal for two runs into one DIR to share results."""

    model: dict[str, Any]
    options: dict[str, Any]
    inputs: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "options": self.options, "inputs": self.inputs}

    def differences(self, old: RunIdentity) -> list[str]:
        """What changed from ``old`` (the journal's) to this run, one phrase each."""
        out: list[str] = []
        of, nf = old.model.get("fields", {}), self.model.get("fields", {})
        changed = sorted(k for k in of.keys() | nf.keys() if of.get(k) != nf.get(k))
        if changed:
            out.append("the model's manifest differs (" + ", ".join(changed) + ")")
        ofi, nfi = old.model.get("files", {}), self.model.get("files", {})
        files = sorted(k for k in ofi.keys() | nfi.keys() if ofi.get(k) != nfi.get(k))
        if files:
            out.append("the model's files differ (" + ", ".join(files) + ")")
        for key in sorted(old.options.keys() | self.options.keys()):
            was, now = old.options.get(key), self.options.get(key)
            if was != now:
                out.append(f"{key} was {_shown(was)}, now {_shown(now)}")
        oi, ni = old.inputs, self.inputs
        if oi != ni:
            if (oi.get("images"), oi.get("missing")) != (ni.get("images"), ni.get("missing")):
                out.append(
                    f"the inputs differ ({oi.get('images')} images and {oi.get('missing')} not "
                    f"found then, {ni.get('images')} and {ni.get('missing')} now)"
                )
            else:
                out.append(
                    f"the inputs differ (the same count, {ni.get('images')} images, but other "
                    "ids, paths or order)"
                )
        return out


def open_run(
    out: Path,
    *,
    bundle_dir: Path,
    manifest: Any,
    engine_label: str,
    batch_size: int,
    options: dict[str, Any],
    images: Iterable[tuple[str, str, bool]],
    missing: Iterable[tuple[str, str]],
    restart: bool = False,
) -> Journal:
    """The journal of a ``predict`` or ``batch`` run into ``out`` (one rule for both: where the
    work runs changes no output). Its identity is the model, every option that can change an
    output (as given, and the engine and batch size they resolved to) and the ordered inputs;
    :class:`JournalError` when ``out`` holds another run's journal. Stale temporary output files
    are removed under the journal's lock, when no other writer is alive."""
    import steelscan
    from steelscan.inference.writers import remove_stale_temps

    shown = dict(options)
    shown["engine (resolved)"] = engine_label
    shown["batch size (resolved)"] = batch_size
    shown["steelscan version"] = steelscan.__version__
    identity = RunIdentity(
        model=model_identity(bundle_dir, manifest),
        options=shown,
        inputs=inputs_identity(images, missing),
    )
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal.open(out, identity, restart=restart)
    remove_stale_temps(out)
    return journal


# -- the journal ------------------------------------------------------------------------------
class Journal:
    """The journal of one run in ``out``; use :meth:`open`, then as a context manager."""

    def __init__(self, out: Path, identity: RunIdentity) -> None:
        self.out = Path(out)
        self.dir = self.out / JOURNAL_DIR
        self.identity = identity
        self.done = 0  # inputs 0 .. done-1 have a journaled result
        self.finished = False
        self.resumed = False
        self._lock: IO[str] | None = None
        self._seg: IO[bytes] | None = None
        self._seg_path: Path | None = None
        self._seg_named = False
        self._next_segment = 1
        self._pending = 0
        self._pending_files: list[Path] = []
        self._last_sync = time.monotonic()

    @classmethod
    def open(cls, out: Path, identity: RunIdentity, *, restart: bool = False) -> Journal:
        """Take DIR's lock and check or create its journal; :class:`JournalError` when another
        process holds it, or when it belongs to another run and ``restart`` is not set."""
        j = cls(out, identity)
        j.dir.mkdir(parents=True, exist_ok=True)
        j._take_lock()
        try:
            run = j.dir / RUN_FILE
            if restart:
                j._wipe()
            elif run.is_file():
                j._check(run)
            elif any(j._segments()):  # results without an identity: cannot be trusted
                j._wipe()
            if not run.is_file():
                write_json_durable(run, {"format": FORMAT, **identity.to_json()})
                fsync_dir(j.out)
            _remove_stale_temps(j.dir)
            segments = j._segments()
            j._next_segment = (segments[-1][0] + 1) if segments else 1
            j.done = sum(1 for _ in j.records())
            j.resumed = j.done > 0
            j.finished = (j.dir / DONE_FILE).is_file() and j.done == identity.inputs["images"]
        except BaseException:
            j.close()
            raise
        return j

    def _take_lock(self) -> None:
        self._lock = open(self.dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
        if fcntl is None:
            return
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise JournalError(
                f"{self.out} is being written by another steelscan predict right now "
                f"(it holds {self.dir / LOCK_FILE}); wait for it or choose another --out"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def _check(self, run: Path) -> None:
        try:
            data = json.loads(run.read_text(encoding="utf-8"))
            old = RunIdentity(data["model"], data["options"], data["inputs"])
            fmt = data.get("format")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JournalError(
                f"{run} cannot be read ({exc}); pass --restart to discard the journal and start "
                "over"
            ) from None
        if fmt != FORMAT:
            raise JournalError(
                f"{run} is journal format {fmt!r}, this steelscan writes {FORMAT}; pass --restart "
                "to discard it and start over"
            )
        changes = self.identity.differences(old)
        if changes:
            raise JournalError(
                f"{self.out} holds the journal of a different run: "
                + "; ".join(changes)
                + ". Run it with the same model and arguments to continue it, pass --restart to "
                "discard it and start over, or choose another --out"
            )

    def _wipe(self) -> None:
        for p in self.dir.iterdir():
            if p.name != LOCK_FILE:
                p.unlink()
        fsync_dir(self.dir)

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.dir.iterdir():
            m = _SEGMENT.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    # -- reading --------------------------------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        """The journaled records in input order, each input once, streamed from the segments.

        A segment is read up to its first torn or unreadable line (what a kill or a power cut
        leaves at its end); a record whose index is not the next one expected is skipped."""
        expected = 0
        for _, path in self._segments():
            if path == self._seg_path and self._seg is not None:
                self._seg.flush()
            with open(path, "rb") as fh:
                for line in fh:
                    rec = _parse(line)
                    if rec is None:
                        break
                    if rec[0] == expected:
                        expected += 1
                        yield rec[1]

    # -- writing --------------------------------------------------------------------------------
    def append(self, index: int, record: dict[str, Any], files: Iterable[Path] = ()) -> None:
        """Journal the result of input ``index`` (the next one); ``files`` it wrote (overlays) are
        fsynced before the journal is, so a durable record never names a lost file."""
        if index != self.done:
            raise ValueError(f"journal: expected the result of input {self.done}, got {index}")
        if self._seg is None:
            self._seg_path = self.dir / f"seg-{self._next_segment:06d}.jsonl"
            self._seg = open(self._seg_path, "xb")  # noqa: SIM115
            self._next_segment += 1
            self._seg_named = False
        line = json.dumps({"i": index, "r": record}, separators=(",", ":")) + "\n"
        self._seg.write(line.encode("utf-8"))
        self._seg.flush()  # in the OS now: survives the death of this process
        self.done += 1
        self._pending += 1
        self._pending_files.extend(files)
        if self._pending >= SYNC_EVERY or time.monotonic() - self._last_sync >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Make everything appended so far durable: overlays first, then the journal."""
        folders = set()
        for path in self._pending_files:
            fsync_file(path)
            folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)
        if self._seg is not None and self._pending:
            self._seg.flush()
            os.fsync(self._seg.fileno())
            if not self._seg_named:  # the new segment's name is in the folder's data
                fsync_dir(self.dir)
                self._seg_named = True
        self._pending = 0
        self._pending_files = []
        self._last_sync = time.monotonic()

    def mark_finished(self) -> None:
        """Record that the final files were assembled and renamed into place."""
        write_json_durable(self.dir / DONE_FILE, {"format": FORMAT, "results": self.done})
        self.finished = True

    def close(self) -> None:
        """Sync and close the segment, then release DIR's lock."""
        if self._seg is not None:
            self.sync()
            self._seg.close()
            self._seg = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _shown(value: Any) -> str:
    """An option's value as a user would say it (a flag is on or off, a default is unset)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, str) else str(value)


def _parse(line: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(index, record)`` of one journal line, or None for a torn or unreadable one."""
    if not line.endswith(b"\n"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    i, rec = data.get("i"), data.get("r")
    if not isinstance(i, int) or not isinstance(rec, dict):
        return None
    return i, rec


def _remove_stale_temps(journal_dir: Path) -> None:
    """Temp files a killed writer left in the journal folder (never under a final name)."""
    for p in journal_dir.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
