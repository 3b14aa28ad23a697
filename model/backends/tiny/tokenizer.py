"""The tiny models' tokenizer: a byte-level BPE trained locally with ``tokenizers`` (every string
encodes), with a family's special tokens, pad token and chat template (the real Qwen2.5-VL and
SmolVLM ones, minus branches our messages never take).

It is trained, at build time, on :func:`corpus`: the project's prompts rendered over five posts,
three chains in the teacher's format, the chain keys and the label words. That text ships
because building a tiny model (the ``tiny:`` kind, the tiny recipe, the random-weight shapes of
:mod:`.shapes`) trains the tokenizer from it; it is the smallest that keeps the tokenizer the
one every recorded figure used (712 learned tokens at ``vocab_size=1024``), and it is not a test
corpus: tests keep their own sample chains in ``tests/support/tiny_helpers.py``.
"""

from __future__ import annotations

from functools import lru_cache

from ...prompts import LABEL_WORDS, guided_reasoning_prompt, label_prompt, reasoning_prompt
from ...types import CHAIN_FIELDS, Label, PostInput, ReasoningChain

FAMILIES = ("qwen2_5_vl", "smolvlm")


def family_name(family: str) -> str:
    """The canonical tiny family of ``family`` (``qwen`` -> ``qwen2_5_vl``, ``idefics3`` -> ``smolvlm``)."""
    f = family.lower().replace("-", "_").replace(".", "_")
    if f in ("qwen2_5_vl", "qwen"):
        return "qwen2_5_vl"
    if f in ("smolvlm", "idefics3"):
        return "smolvlm"
    raise ValueError(f"unknown tiny family {family!r}; known: {FAMILIES}")


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

#: The posts whose prompts the tokenizer is trained on.
_CORPUS_POSTS = (
    PostInput("Best day ever at the beach with friends!"),
    PostInput("The train was late again, so annoying."),
    PostInput("The council meets on Tuesday to discuss the budget.", aspect="council"),
    PostInput("Loving the new phone, the camera is amazing", aspect="camera"),
    PostInput("Great, another rainy weekend. Just perfect.", aspect="weekend"),
)

#: Chains in the teacher's format the tokenizer is trained on (so that chain text encodes in
#: few tokens).
_CORPUS_CHAINS = (
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
)


def corpus() -> list[str]:
    """The lines the tiny tokenizer is trained on (see the module docstring)."""
    lines: list[str] = []
    for post in _CORPUS_POSTS:
        lines += [reasoning_prompt(post), label_prompt(post)]
        for label in Label:
            lines.append(guided_reasoning_prompt(post, label))
    for chain in _CORPUS_CHAINS:
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
    tok.train_from_iterator(corpus() * 3, trainer=trainer)
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


__all__ = ["FAMILIES", "family_name", "IDEFICS3_CHAT_TEMPLATE", "IDEFICS3_SPECIAL", "QWEN_CHAT_TEMPLATE", "QWEN_SPECIAL", "corpus",
           "tiny_tokenizer"]
