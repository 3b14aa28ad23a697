"""Fixtures for the training tests: small synthetic datasets with Pillow-made images."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mulcot_train_synth import write_dataset


@pytest.fixture
def synthetic_jsonl(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "syn", n=12)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL built by model.backends.tiny.build (shared by the session's tests)."""
    from model.backends.tiny.build import build_tiny

    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen", seed=0)


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory) -> Path:
    from model.backends.tiny.build import build_tiny

    return build_tiny("smolvlm", tmp_path_factory.mktemp("tiny") / "smolvlm", seed=0)
