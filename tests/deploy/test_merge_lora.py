"""deploy/merge_lora.py on a tiny random Qwen2.5-VL with a LoRA adapter on the language model
AND the vision tower (the part vLLM would ignore): the merged directory, loaded alone, gives the
same label logits as base + adapter, and keeps the base's tokenizer/processor files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from model import load_student
from model.backends.tiny.build import build_tiny_qwen2_5_vl, load_tiny
from model.types import PostInput

ROOT = Path(__file__).resolve().parents[2]


def _merge_module():
    spec = importlib.util.spec_from_file_location("merge_lora", ROOT / "deploy" / "merge_lora.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_merge_lora_matches_base_plus_adapter(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = build_tiny_qwen2_5_vl(tmp_path / "base")
    model, _ = load_tiny(base)
    torch.manual_seed(5)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "qkv"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    assert any("visual" in n and "lora_A" in n for n, _ in peft_model.named_parameters()), "LoRA on the vision tower"
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    merge = _merge_module().merge
    out = merge(str(base), tmp_path / "merged", adapter=str(adapter), dtype="fp32")
    assert (out / "mulcot_merge.json").exists() and not (out / "adapter_config.json").exists()
    for f in ("tokenizer.json", "preprocessor_config.json"):
        assert (out / f).read_bytes() == (base / f).read_bytes()
    with pytest.raises(FileExistsError):
        merge(str(base), out, adapter=str(adapter))

    posts = [PostInput(text="a sunny day", image=Image.new("RGB", (60, 40), "yellow")), PostInput(text="rain")]
    want = load_student(f"hf:{base}+{adapter}", chain=False, image_size=56).label_logits(posts)[0]
    got = load_student(f"hf:{out}", chain=False, image_size=56).label_logits(posts)[0]
    plain = load_student(f"hf:{base}", chain=False, image_size=56).label_logits(posts)[0]
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3), "the adapter changed nothing: the test would prove nothing"
