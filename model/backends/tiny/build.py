"""Tiny, random-initialised vision-language models, built offline: the ``tiny:<family>`` spec kind.

Why this ships in the product package and not only in ``tests/``: no model hub is reachable
from where this project is built and tested, yet the HF path (``hf:`` students, the MulCoT-RD
training pipeline, the engine) must run end to end. ``load_student("tiny:qwen2_5_vl")`` and
recipe fields such as ``model: tiny:qwen2_5_vl`` (``training/recipes/tiny.yaml``: a full
``mulcot distill run`` in seconds) build one of these models locally; tests, the engine's shape
tables (``model/engine/checks/shapes.py``) and the GPU checks (``deploy/gpu``) use the same builders.
The models are random: their output is gibberish, but deterministic for a seed.

What is built, into one directory that ``from_pretrained`` loads like a hub model:

* a byte-level BPE tokenizer trained with ``tokenizers`` on a small built-in corpus (the
  project's prompts, the five chain keys, the label words), with the family's special tokens
  and a chat template;
* a random-initialised model of about a million parameters with the *architecture* of a real
  family (Qwen2.5-VL, or Idefics3 = the SmolVLM architecture);
* the processor, built from its constructors (``AutoProcessor`` needs torchvision for the
  video processors, which does not load beside this torch; see ``model.backends.hf.processor``).

API (all deterministic for a given ``seed``)::

    tiny_tokenizer(family="qwen2_5_vl", vocab_size=1024) -> PreTrainedTokenizerFast
    build_tiny_qwen2_5_vl(path, *, seed=0, image_size=56, vocab_size=1024) -> Path
    build_tiny_smolvlm(path, *, seed=0, image_size=56, vocab_size=1024) -> Path   # Idefics3 architecture
    build_tiny(family, path, **kw) -> Path                        # family: "qwen2_5_vl" | "smolvlm"
    load_tiny(path) -> (model, processor)                         # plain transformers objects
    family_name("qwen") -> "qwen2_5_vl"                           # ValueError for unknown families
    FAMILIES = ("qwen2_5_vl", "smolvlm")

Building one takes about a second. Tests that need a real chain teach one briefly
(``tests/support/tiny_helpers.py: overfit_tiny``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...prompts import LABEL_WORDS, guided_reasoning_prompt, label_prompt, reasoning_prompt
from ...types import CHAIN_FIELDS, Label, PostInput, ReasoningChain

FAMILIES = ("qwen2_5_vl", "smolvlm")

#: Special tokens of the Qwen2.5-VL chat format (same strings as the real tokenizer).
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Special tokens of the Idefics3/SmolVLM chat format.
IDEFICS3_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *[f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)],
]

# The real Qwen2.5-VL template, minus tools/video branches (same rendering for our messages).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The SmolVLM-Instruct template.
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SAMPLE_POSTS = [
    PostInput("Best day ever at the beach with friends!"),
    PostInput("The train was late again, so annoying."),
    PostInput("The council meets on Tuesday to discuss the budget.", aspect="council"),
    PostInput("Loving the new phone, the camera is amazing", aspect="camera"),
    PostInput("Great, another rainy weekend. Just perfect.", aspect="weekend"),
]

SAMPLE_CHAINS = [
    ReasoningChain(
        text_analysis="The text expresses joy and excitement about a day at the beach.",
        image_analysis="The image shows smiling people on a sunny beach.",
        conflict_resolution="Text and image agree, both are cheerful.",
        final_conclusion="The post is clearly positive.",
        prediction="positive",
    ),
    ReasoningChain(
        text_analysis="The text complains that the train was late and calls it annoying.",
        image_analysis="The image shows a crowded platform and a delay board.",
        conflict_resolution="There is no conflict; both show frustration.",
        final_conclusion="The sentiment is negative.",
        prediction="negative",
    ),
    ReasoningChain(
        text_analysis="The text states a fact about a meeting, with no opinion.",
        image_analysis="No image is attached, so there is nothing to analyse.",
        conflict_resolution="Only the text is available; it is objective.",
        final_conclusion="A factual statement about the target is neutral.",
        prediction="neutral",
    ),
]


def _corpus() -> list[str]:
    lines: list[str] = []
    for post in SAMPLE_POSTS:
        lines += [reasoning_prompt(post), label_prompt(post)]
        for label in Label:
            lines.append(guided_reasoning_prompt(post, label))
    for chain in SAMPLE_CHAINS:
        lines.append(chain.render())
    lines += list(CHAIN_FIELDS) + [f'"{f}":' for f in CHAIN_FIELDS]
    lines += [w for w in LABEL_WORDS] + [f" {w}" for w in LABEL_WORDS]
    lines += [f"Prediction: {w}\n" for w in LABEL_WORDS] * 4
    lines += ["User:", "Assistant:", "system", "user", "assistant", "You are a helpful assistant."]
    return lines


@lru_cache(maxsize=4)
def _tokenizer_json(family: str, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = QWEN_SPECIAL if family == "qwen2_5_vl" else IDEFICS3_SPECIAL
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() * 3, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(family: str = "qwen2_5_vl", vocab_size: int = 1024):
    """A fast tokenizer trained locally (byte-level BPE; every string encodes), with the
    family's special tokens, pad token and chat template set. Left padding."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    family = family_name(family)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family, vocab_size)),
        padding_side="left",
    )
    if family == "qwen2_5_vl":
        tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
        tok.chat_template = QWEN_CHAT_TEMPLATE
    else:
        tok.add_special_tokens(
            {
                "bos_token": "<|im_start|>",
                "eos_token": "<end_of_utterance>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": IDEFICS3_SPECIAL[2:5],
            }
        )
        tok.chat_template = IDEFICS3_CHAT_TEMPLATE
    return tok


def family_name(family: str) -> str:
    """The canonical tiny family of ``family`` (``qwen`` -> ``qwen2_5_vl``, ``idefics3`` -> ``smolvlm``)."""
    f = family.lower().replace("-", "_").replace(".", "_")
    if f in ("qwen2_5_vl", "qwen"):
        return "qwen2_5_vl"
    if f in ("smolvlm", "idefics3"):
        return "smolvlm"
    raise ValueError(f"unknown tiny family {family!r}; known: {FAMILIES}")


#: The language model of both tiny families: 2 layers of width 64.
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)


def tiny_qwen2_5_vl_config(vocab_size: int, tok: Any = None, **overrides: Any):
    """A Qwen2.5-VL config of ~1M parameters (2 text layers, 2 vision blocks)."""
    from transformers import Qwen2_5_VLConfig

    ids = (lambda t: tok.convert_tokens_to_ids(t)) if tok is not None else (lambda t: QWEN_SPECIAL.index(t))
    text = dict(
        **_TINY_TEXT,
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        **overrides,
    )


def tiny_idefics3_config(vocab_size: int, tok: Any, image_size: int = 56, **overrides: Any):
    """An Idefics3 (SmolVLM architecture) config of ~1M parameters."""
    from transformers import Idefics3Config

    text = dict(
        **_TINY_TEXT,
        model_type="llama",
        vocab_size=vocab_size,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    return Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_tiny_qwen2_5_vl(path: str | Path, *, seed: int = 0, image_size: int = 56, vocab_size: int = 1024) -> Path:
    """Build and save a tiny random Qwen2.5-VL (model + tokenizer + processor) into ``path``.

    ``image_size`` is the processor's default square resolution (min = max pixels =
    ``image_size**2``; a multiple of 28). Returns ``path``.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer("qwen2_5_vl", vocab_size)
    config = tiny_qwen2_5_vl_config(len(tok), tok)
    _seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    px = image_size * image_size
    # a fresh ``size`` dict: the constructor's min/max_pixels path mutates a class-level default
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": px, "longest_edge": px}, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    model.save_pretrained(path, safe_serialization=True)
    _save_parts(path, tok, image_processor, QWEN_CHAT_TEMPLATE, "Qwen2_5_VLProcessor")
    _write_marker(path, "qwen2_5_vl", seed)
    return path


def build_tiny_smolvlm(path: str | Path, *, seed: int = 0, image_size: int = 56, vocab_size: int = 1024) -> Path:
    """Build and save a tiny random Idefics3 model (the SmolVLM architecture) into ``path``.

    Images are resized to ``image_size`` square (no tiling): ``(image_size/14)**2/4`` image
    tokens each. Returns ``path``.
    """
    from transformers import Idefics3ForConditionalGeneration
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer("smolvlm", vocab_size)
    config = tiny_idefics3_config(len(tok), tok, image_size=image_size)
    _seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    seq_len = (image_size // 14) ** 2 // 4
    model.save_pretrained(path, safe_serialization=True)
    _save_parts(path, tok, image_processor, IDEFICS3_CHAT_TEMPLATE, "Idefics3Processor", image_seq_len=seq_len)
    _write_marker(path, "smolvlm", seed)
    return path


def build_tiny(family: str, path: str | Path, **kwargs: Any) -> Path:
    """``build_tiny_qwen2_5_vl`` or ``build_tiny_smolvlm`` by family name."""
    family = family_name(family)
    builder = build_tiny_qwen2_5_vl if family == "qwen2_5_vl" else build_tiny_smolvlm
    return builder(path, **kwargs)


def _save_parts(path: Path, tok: Any, image_processor: Any, template: str, processor_class: str,
                **meta: Any) -> None:
    """Save tokenizer, image processor, chat template and processor metadata the way
    ``model.backends.hf.processor.build_processor`` reads them (and the way hub repos lay them out)."""
    tok.save_pretrained(path)
    image_processor.save_pretrained(path)
    (path / "chat_template.jinja").write_text(template)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": processor_class, **meta}, indent=2))


def _write_marker(path: Path, family: str, seed: int) -> None:
    (path / "mulcot_tiny.json").write_text(json.dumps({"family": family, "seed": seed, "random_init": True}))


def load_tiny(path: str | Path):
    """Load a tiny model directory as plain ``(model, processor)`` (fp32, eval mode), with the
    same processor construction as the HF backend. For training code and tests."""
    from ..hf.loading import load_model_and_processor

    model, processor, _ = load_model_and_processor(str(path), device="cpu")
    return model, processor


__all__ = [
    "FAMILIES",
    "family_name",
    "SAMPLE_CHAINS",
    "tiny_tokenizer",
    "build_tiny_qwen2_5_vl",
    "build_tiny_smolvlm",
    "build_tiny",
    "load_tiny",
    "tiny_qwen2_5_vl_config",
    "tiny_idefics3_config",
]
