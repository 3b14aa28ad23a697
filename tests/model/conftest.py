"""Fixtures for the model tests: tiny random VLMs built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.backends.tiny.build import build_tiny_qwen2_5_vl, build_tiny_smolvlm


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL saved to disk (``load_student(f"hf:{dir}")`` loads it)."""
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_smolvlm_dir(tmp_path_factory) -> Path:
    """A tiny random Idefics3 (SmolVLM architecture) saved to disk."""
    return build_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture(scope="session", params=["qwen2_5_vl", "smolvlm"])
def tiny_dir(request, tiny_qwen_dir, tiny_smolvlm_dir) -> Path:
    """Each tiny family in turn."""
    return tiny_qwen_dir if request.param == "qwen2_5_vl" else tiny_smolvlm_dir


@pytest.fixture(scope="session")
def tiny_qwen_student(tiny_qwen_dir):
    from model import load_student

    return load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=24, image_size=56)


@pytest.fixture(scope="session")
def tiny_student(tiny_dir):
    from model import load_student

    return load_student(f"hf:{tiny_dir}", max_new_tokens=24, image_size=56)
