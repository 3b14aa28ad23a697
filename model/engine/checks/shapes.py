"""Models for the engine's benchmark and checks, built in memory with random weights (no hub):
the tiny test shapes of :mod:`model.backends.tiny.build`, and the real Qwen2.5-VL-3B-Instruct shape."""

from __future__ import annotations

from typing import Any

#: Qwen2.5-VL-3B-Instruct's config.json (architecture fields), written by hand.
QWEN2_5_VL_3B = {
    "text": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=70,
        attention_dropout=0.0,
        tie_word_embeddings=True,
    ),
    "vision": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        hidden_act="silu",
        in_channels=3,
        out_hidden_size=2048,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    ),
    "tie_word_embeddings": True,
}

SHAPES = ("tiny", "tiny-smolvlm", "3b")


def tiny_module():
    """The module with the tiny offline tokenizer and configs (:mod:`model.backends.tiny.build`)."""
    from ...backends.tiny import build as tiny

    return tiny


def _qwen_processor(tok: Any, image_size: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ...backends.hf.processor import _qwen_processor_class

    px = image_size * image_size
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": px, "longest_edge": px}, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    return _qwen_processor_class()(image_processor=ip, tokenizer=tok, chat_template=tiny_module().QWEN_CHAT_TEMPLATE)


def build_shape(shape: str, *, device: str = "cpu", dtype: Any = None, image_size: int = 280, seed: int = 0):
    """``(model, processor)``: ``tiny`` (the test Qwen2.5-VL), ``tiny-smolvlm`` (the test
    Idefics3) or ``3b`` (Qwen2.5-VL-3B's architecture, 3.75 B parameters), random weights, eval
    mode, on ``device`` in ``dtype``. The tokenizer is the small local one of
    :mod:`model.backends.tiny.build` (the real one is not reachable offline); the 3B model keeps its real
    151,936-row vocabulary."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    t = tiny_module()
    tiny_idefics3_config, tiny_qwen2_5_vl_config, tiny_tokenizer = (
        t.tiny_idefics3_config, t.tiny_qwen2_5_vl_config, t.tiny_tokenizer)
    dtype = dtype or torch.float32
    if shape == "tiny-smolvlm":
        from transformers import Idefics3ForConditionalGeneration, Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        IDEFICS3_CHAT_TEMPLATE = t.IDEFICS3_CHAT_TEMPLATE
        tok = tiny_tokenizer("smolvlm")
        config = tiny_idefics3_config(len(tok), tok, image_size=image_size)
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config).to(device=device, dtype=dtype).eval()
        ip = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                       max_image_size={"longest_edge": image_size})
        processor = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(image_size // 14) ** 2 // 4,
                                      chat_template=IDEFICS3_CHAT_TEMPLATE)
    else:
        tok = tiny_tokenizer("qwen2_5_vl")
        if shape == "tiny":
            config = tiny_qwen2_5_vl_config(len(tok), tok)
        elif shape == "3b":
            ids = {k: tok.convert_tokens_to_ids(v) for k, v in dict(
                image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
                vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>").items()}
            text = dict(QWEN2_5_VL_3B["text"], bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
            config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(QWEN2_5_VL_3B["vision"]),
                                      tie_word_embeddings=QWEN2_5_VL_3B["tie_word_embeddings"], **ids)
        else:
            raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
        model = model.to(device=device, dtype=dtype).eval()
        processor = _qwen_processor(tok, image_size)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    return model, processor
