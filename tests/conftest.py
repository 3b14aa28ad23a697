"""Root fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MULCOT_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data``; tests that need it skip with a clear message when it is absent."""
    if not (DATA / "README.md").exists():
        pytest.skip(f"research data not found at {DATA} (set MULCOT_DATA_DIR)")
    return DATA
