"""steelscan: flaw detection on steel strip surfaces."""

from __future__ import annotations

__version__ = "0.1.0"

SEVERSTAL_SHAPE = (256, 1600)


def load_model(path, **kwargs):
    """Rebuild a trained model bundle (no network, no unpickling). See `steelscan.bundle`."""
    from steelscan.bundle import load_model as _load

    return _load(path, **kwargs)


__all__ = ["__version__", "SEVERSTAL_SHAPE", "load_model"]
