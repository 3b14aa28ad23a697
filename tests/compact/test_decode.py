"""The compact chain writer's greedy decoder against ``generate(do_sample=False)``.

A tiny random Llama (the SmolLM2 architecture, with grouped-query attention) in fp32 and a
tokenizer trained locally: the decoder, with its cached prefix and finished-row pruning, must
pick exactly the tokens ``generate`` picks, for rows of different lengths that end at
different steps.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from model.backends.compact.decode import GreedyDecoder
from model.backends.tiny.build import tiny_tokenizer

PREFIX = "<|im_start|>system\nYou explain the sentiment of posts.<|im_end|>\n<|im_start|>user\n"
POSTS = [
    "great game tonight",
    "the council meets on Tuesday to discuss the new budget and the roads",
    "no",
    "worst customer service ever , never flying with them again !",
    "Serena wins another title",
]


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer("qwen2_5_vl")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        initializer_range=0.5,  # varied greedy outputs
    )
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("eager")
    return model, tok


def _reference(model, tok, prompts, eos, n):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    out = []
    for row in gen[:, enc["input_ids"].shape[1]:].tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def test_matches_generate_with_prefix_and_pruning(tiny_llama):
    model, tok = tiny_llama
    prompts = [f"{PREFIX}{p}<|im_end|>\n<|im_start|>assistant\n" for p in POSTS]
    n = 24
    # a random model rarely emits its end token: take as "end" the token found in the most
    # rows, so that rows finish at different steps and pruning is exercised
    free = GreedyDecoder(model, tok, PREFIX)
    free.eos = len(tok) + 1  # never produced
    first = free.generate(prompts, n)
    assert all(len(r) == n for r in first)
    eos = Counter(t for r in first for t in set(r)).most_common(1)[0][0]
    ref = _reference(model, tok, prompts, eos, n)
    dec = GreedyDecoder(model, tok, PREFIX)
    dec.eos = eos
    got = dec.generate(prompts, n)
    assert got == ref
    assert len({len(r) for r in got}) > 1, "rows should end at different steps"
    # the prompt pass in chunks of two rows, without a cached prefix, and one prompt alone
    chunked = GreedyDecoder(model, tok, PREFIX, prefill_rows=2)
    chunked.eos = eos
    assert chunked.generate(prompts, n) == ref
    plain = GreedyDecoder(model, tok, "")
    plain.eos = eos
    assert plain.generate(prompts, n) == ref
    assert dec.generate(prompts[1:2], n) == ref[1:2]


def test_prompt_must_start_with_prefix(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="prefix"):
        GreedyDecoder(model, tok, PREFIX).generate(["something else entirely"], 4)
    assert GreedyDecoder(model, tok, PREFIX).generate([], 4) == []


def test_grouped_eager_attention_matches_eager(tiny_llama):
    """The chain writer's attention (model/kernels/attention.py: no per-head copy of the
    key/value cache) gives eager attention's logits, with padding, and the same greedy tokens."""
    from model.kernels.attention import GROUPED_EAGER, register

    model, tok = tiny_llama
    prompts = [f"{PREFIX}{p}<|im_end|>\n<|im_start|>assistant\n" for p in POSTS]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (enc["attention_mask"] == 0).any()
    with torch.inference_mode():
        ref = model(**enc).logits
    want = GreedyDecoder(model, tok, PREFIX).generate(prompts, 16)
    register()
    model.set_attn_implementation(GROUPED_EAGER)
    assert model.config._attn_implementation == GROUPED_EAGER
    try:
        with torch.inference_mode():
            got = model(**enc).logits
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert GreedyDecoder(model, tok, PREFIX).generate(prompts, 16) == want
    finally:
        model.set_attn_implementation("eager")


def test_stop_ids_end_a_row_like_an_end_token(tiny_llama):
    model, tok = tiny_llama
    prompts = [f"{PREFIX}{p}<|im_end|>\n<|im_start|>assistant\n" for p in POSTS]
    free = GreedyDecoder(model, tok, PREFIX)
    free.eos = len(tok) + 1  # never produced
    first = free.generate(prompts, 16)
    stop = Counter(t for r in first for t in set(r)).most_common(1)[0][0]
    got = free.generate(prompts, 16, frozenset({stop}))
    for full, cut in zip(first, got):  # each row is the free run up to (without) its first stop token
        assert cut == (full[: full.index(stop)] if stop in full else full)
