"""Shared fixtures: the real-data mirror and small random generators."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def mirror(monkeypatch) -> Path:
    """The folder of real recordings (``../shared/data``), set as the registry mirror."""
    path = Path(os.environ.get("NEURODATA_MIRROR", SHARED_DATA))
    if not path.is_dir():
        pytest.skip("the real-data mirror ../shared/data is not available on this machine")
    monkeypatch.setenv("NEURODATA_MIRROR", str(path))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(0)
