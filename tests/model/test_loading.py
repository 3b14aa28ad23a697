"""model.loading: the one spec grammar (a registry of kinds), its checks, and the HF sources
that training reads through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import loading
from model.loading import (
    Spec,
    SpecError,
    as_hf_spec,
    check_spec,
    hf_source,
    kinds,
    load_error_message,
    load_student,
    parse_spec,
    register_kind,
)


def test_every_builtin_kind_parses():
    assert set(kinds()) >= {"default", "noop", "compact", "hf", "tiny", "openai"}
    assert parse_spec("default") == ("default", "", None)
    assert parse_spec(" noop ") == Spec("noop", "", None)
    assert parse_spec("compact:/w/x") == ("compact", "/w/x", None)
    assert parse_spec("hf:base+adapter") == ("hf", "base", "adapter")
    assert parse_spec("MulCoT-RD-3B") == ("hf", "sghn/MulCoT-RD-3B", None)
    assert parse_spec("tiny:qwen") == ("tiny", "qwen2_5_vl", None)  # the family's canonical name
    assert parse_spec("openai:http://h:8000/v1#m") == ("openai", "http://h:8000/v1#m", None)
    assert str(parse_spec("hf:base+adapter")) == "hf:base+adapter"


@pytest.mark.parametrize("bad, says", [
    ("", "bad student spec"), ("nonsense", "bad student spec"), ("hf:", "expected hf:<model>"),
    ("hf:base+", "expected hf:<model>"), ("zip:x", "unknown student kind 'zip'"),
    ("tiny:llama", "unknown tiny family"), ("default:x", "bad student spec"),
])
def test_bad_specs_say_what_is_wrong(bad, says):
    with pytest.raises(SpecError, match=says):
        parse_spec(bad)


def test_check_spec_finds_missing_weights_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(SpecError, match="does not exist"):
        check_spec(f"compact:{tmp_path}/nothing")
    check_spec(f"compact:{tmp_path}")
    monkeypatch.setattr(loading, "DEFAULT_WEIGHTS", tmp_path / "no-weights")
    with pytest.raises(SpecError, match="default student is not available.*no-weights"):
        check_spec("default")
    assert "not available" in load_error_message("default", OSError("x"))
    assert load_error_message("noop", OSError("boom")) == "cannot load student 'noop': OSError: boom"


def test_a_backend_adds_a_kind():
    seen = {}

    def loader(spec, options):
        seen["spec"], seen["options"] = spec, options
        return "a student"

    register_kind("echo", loader, lambda rest: (rest.upper(), None), syntax="echo:<word>")
    try:
        assert load_student("echo:hi", device="cpu") == "a student"
        assert seen == {"spec": ("echo", "HI", None), "options": {"device": "cpu"}}
        with pytest.raises(SpecError, match="echo:<word>"):
            parse_spec("echo:")
    finally:
        loading._KINDS.pop("echo")


def test_hf_sources_for_training(tmp_path: Path):
    assert hf_source("hf:base+adapter") == ("base", "adapter")
    assert hf_source("some/dir+ad") == ("some/dir", "ad")  # a bare directory or hub id
    assert hf_source("mulcot-rd-7b") == ("sghn/MulCoT-RD-7B", None)
    assert as_hf_spec("runs/a/best") == "hf:runs/a/best"
    with pytest.raises(SpecError, match="compact spec"):
        hf_source("compact:x")
    path, adapter = hf_source("tiny:smolvlm", workdir=tmp_path, seed=1)
    assert adapter is None and Path(path) == tmp_path / "tiny-smolvlm-s1" and (Path(path) / "config.json").exists()


def test_tiny_kind_loads_a_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from model import PostInput

    monkeypatch.setenv("MULCOT_TINY_DIR", str(tmp_path))
    student = load_student("tiny:qwen2_5_vl", device="cpu", image_size=56)
    assert (tmp_path / "tiny-qwen2_5_vl" / "config.json").exists()
    (pred,) = student.predict([PostInput("a fine day", id="p")], chain=False)
    assert abs(sum(pred.probabilities.values()) - 1) < 1e-5
    assert pred.model_name == "tiny:qwen2_5_vl"


def test_every_kind_registers_its_options_dataclass():
    """Each built-in kind names its backend's options dataclass; the defaults are said there once
    and the backend reads them (no second default in a constructor signature)."""
    import dataclasses
    import inspect

    from model.backends.compact.options import CompactOptions
    from model.backends.hf.options import HFOptions
    from model.backends.openai.options import OpenAIOptions

    expected = {"default": CompactOptions, "compact": CompactOptions, "hf": HFOptions, "tiny": HFOptions,
                "openai": OpenAIOptions}
    for kind in loading.kinds():
        options = loading.kind_options(kind)
        if kind == "py":  # a user's own factory takes its own options
            assert options is None
            continue
        assert options is not None and dataclasses.is_dataclass(options), kind
        if kind in expected:
            assert options is expected[kind]
    assert loading.kind_options("hf:/some/model+adapter") is HFOptions
    from model.backends.compact.student import CompactStudent
    from model.backends.hf.student import HFStudent
    from model.backends.openai.student import OpenAIStudent

    for cls, options in ((HFStudent, HFOptions), (OpenAIStudent, OpenAIOptions), (CompactStudent, CompactOptions)):
        params = set(inspect.signature(cls.__init__).parameters)  # keyword options go through the dataclass
        assert "options" in params and not {f.name for f in dataclasses.fields(options)} & params, cls


def test_backend_options_split_known_from_unknown(caplog: pytest.LogCaptureFixture):
    import logging

    from model.backends.hf.options import HFOptions
    from model.backends.openai.options import OpenAIOptions

    with caplog.at_level(logging.INFO):
        o = HFOptions.split({"max_new_tokens": 8, "engine": "off", "chain_batch_size": 4}, who="HFStudent")
    assert o.max_new_tokens == 8 and o.engine == "off" and o.chain_prompt == "reasoning"
    assert "HFStudent ignores options ['chain_batch_size']" in caplog.text
    assert o.load_options() == {"device": None, "dtype": None, "merge_adapter": True, "attn_implementation": None}
    with pytest.raises(ValueError, match="chain_prompt"):
        HFOptions(chain_prompt="other")
    with pytest.raises(ValueError, match="constraint"):
        OpenAIOptions(constraint="nope")
