"""Fixtures for the training tests: small synthetic datasets with Pillow-made images."""

from __future__ import annotations

from pathlib import Path

import pytest

from mulcot_train_synth import write_dataset


@pytest.fixture
def synthetic_jsonl(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "syn", n=12)
