"""Helpers shared by the benchmark scripts: the machine's name and docs/benchmarks.md sections."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (what `lscpu` calls the model name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(section: str, text: str, doc: Path = DOC) -> None:
    """Replace (or append) one ``## `` section of the benchmarks page atomically, keeping others."""
    page = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    start = page.find(section + "\n")
    if start == -1:
        page = page.rstrip("\n") + "\n\n" + text
    else:
        nxt = page.find("\n## ", start + len(section))
        page = page[:start] + text.rstrip("\n") + "\n" + (page[nxt:] if nxt != -1 else "")
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(page.rstrip("\n") + "\n")
    os.replace(tmp, doc)
