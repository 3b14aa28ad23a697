"""Named model shapes, one registry (like litgpt's ``Config.from_name``): the architecture of
each random-weight VLM this project builds offline. The ``tiny:`` kind, the engine's benchmark
and checks, ``deploy/gpu`` and the tests all take their configs from here, so each shape is
written once.

* ``tiny-qwen2_5_vl`` (aliases ``tiny``, ``qwen2_5_vl``, ``qwen``): Qwen2.5-VL, ~1M parameters
  (2 text layers of width 64, 2 vision blocks), the test model;
* ``tiny-smolvlm`` (``smolvlm``, ``idefics3``): Idefics3, the SmolVLM architecture, ~1M parameters;
* ``qwen2_5_vl-3b`` (``3b``): Qwen2.5-VL-3B-Instruct's architecture (its config.json's
  architecture fields, written out: no hub), 3.75 B parameters.

Every shape uses the small tokenizer of :mod:`.tokenizer` (the real ones are not reachable
offline); the 3B shape keeps its real 151,936-row vocabulary and sets its token ids to that
tokenizer's. No torch or transformers import until :meth:`Shape.config` is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The language model of both tiny shapes: 2 layers of width 64.
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)


@dataclass(frozen=True)
class Shape:
    """One named architecture: the text and vision sub-configs (token ids and the vocabulary
    size are filled in from the tokenizer), top-level config fields, and the tokenizer family."""

    name: str
    family: str
    """The tokenizer and chat format (:data:`model.backends.tiny.tokenizer.FAMILIES`)."""
    text: dict[str, Any]
    vision: dict[str, Any]
    top: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    """None: the tokenizer's size."""
    image_size: int = 56
    """The default image side: the processor's resolution (and Idefics3's vision input)."""
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_name(cls, name: str) -> Shape:
        """The registered shape called ``name`` (or one of its aliases); ValueError otherwise."""
        key = str(name).strip().lower()
        for shape in SHAPES.values():
            if key == shape.name or key in shape.aliases:
                return shape
        raise ValueError(f"unknown model shape {name!r}; known: {names()}")

    @property
    def tiny(self) -> bool:
        return self.name.startswith("tiny")

    @property
    def model_type(self) -> str:
        """transformers' ``model_type`` of the model (``qwen2_5_vl`` or ``idefics3``)."""
        return "qwen2_5_vl" if self.family == "qwen2_5_vl" else "idefics3"

    def config(self, tok: Any, *, image_size: int | None = None) -> Any:
        """The transformers config of this shape for tokenizer ``tok`` (its special-token ids and,
        for the tiny shapes, its vocabulary size); ``image_size`` is Idefics3's vision input."""
        text = {**self.text, "vocab_size": self.vocab_size or len(tok), **_text_ids(self.family, tok)}
        if self.family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLConfig

            ids = {k: tok.convert_tokens_to_ids(v) for k, v in (
                ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
            return Qwen2_5_VLConfig(text_config=text, vision_config=dict(self.vision), **self.top, **ids)
        from transformers import Idefics3Config

        vision = {**self.vision, "image_size": int(image_size or self.image_size)}
        return Idefics3Config(text_config=text, vision_config=vision, image_token_id=tok.convert_tokens_to_ids("<image>"),
                              pad_token_id=tok.pad_token_id, **self.top)


def _text_ids(family: str, tok: Any) -> dict[str, int]:
    if family == "qwen2_5_vl":
        return {"bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>")}
    return {"bos_token_id": tok.convert_tokens_to_ids("<|im_start|>"),
            "eos_token_id": tok.convert_tokens_to_ids("<end_of_utterance>"),
            "pad_token_id": tok.pad_token_id}


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape(
        "tiny-qwen2_5_vl", "qwen2_5_vl",
        text=dict(**_TINY_TEXT, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
        aliases=("tiny", "qwen2_5_vl", "qwen"),
    ),
    Shape(
        "tiny-smolvlm", "smolvlm",
        text=dict(**_TINY_TEXT, model_type="llama", tie_word_embeddings=False),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14),
        top=dict(scale_factor=2, tie_word_embeddings=False),
        aliases=("smolvlm", "idefics3"),
    ),
    Shape(
        "qwen2_5_vl-3b", "qwen2_5_vl",
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                  use_sliding_window=False, sliding_window=32768, max_window_layers=70, attention_dropout=0.0,
                  tie_word_embeddings=True),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu", in_channels=3,
                    out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
        top=dict(tie_word_embeddings=True),
        vocab_size=151936,
        image_size=280,
        aliases=("3b",),
    ),
)}


def names() -> list[str]:
    """Every registered name and alias."""
    return [n for s in SHAPES.values() for n in (s.name, *s.aliases)]


__all__ = ["SHAPES", "Shape", "names"]
