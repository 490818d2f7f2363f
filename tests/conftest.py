"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real sample data folder: `$WXENS_SAMPLE_DATA`, else `../shared/data` beside the repo."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("WXENS_SAMPLE_DATA", default))
    if not path.is_dir():
        message = f"sample data not found at {path} (set WXENS_SAMPLE_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has ../shared beside the clone
        pytest.skip(message)
    return path
