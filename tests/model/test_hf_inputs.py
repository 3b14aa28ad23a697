"""Serving and training prepare a post identically (model.backends.hf.inputs): the same pixels and the
same prompt tokens, for both families, including a big photo that is shrunk first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model import Label, PostInput
from model.backends.hf.inputs import encode_batch, image_max_side, images_kwargs
from model.backends.tiny.build import load_tiny
from model.prompts import label_prompt, reasoning_prompt
from training.data import Example
from training.mulcot.vlm import Item, collate_items, label_item


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


POSTS = [
    PostInput("a big photo of the beach", image=_photo(1600, 1200), aspect="beach", id="big"),
    PostInput("a small one", image=_photo(90, 60, 1), id="small"),
    PostInput("no image at all", id="text"),
]


@pytest.mark.parametrize("image_size", [56, None])
def test_serving_and_training_give_identical_tensors(tiny_dir, image_size):
    _, processor = load_tiny(tiny_dir)
    family = "qwen2_5_vl" if "qwen" in str(tiny_dir) else "idefics3"
    served = encode_batch(processor, POSTS, [label_prompt(p) for p in POSTS], family=family, image_size=image_size)
    items = [label_item(Example(p.id, p.text, Label.POSITIVE, p.aspect), p) for p in POSTS]
    trained = collate_items(processor, items, family=family, image_size=image_size)
    for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask"):
        if key in served:
            assert torch.equal(served[key], trained[key]), key
    # each row: the served prompt tokens, then the answer (left padding: compare without pads)
    for i in range(len(POSTS)):
        prompt = served["input_ids"][i][served["attention_mask"][i].bool()].tolist()
        row = trained["input_ids"][i][trained["attention_mask"][i].bool()].tolist()
        n_answer = int(trained["answer_mask"][i].sum())
        assert row[:-n_answer] == prompt


def test_big_photos_are_shrunk_before_the_processor_in_both_paths():
    assert image_max_side(56) == 448 and image_max_side(280) == 560 and image_max_side(None) == 2048
    kw = images_kwargs(POSTS, family="qwen2_5_vl", image_size=280)
    big, small = kw["images"]
    assert max(big.size) == 560 and small.size == (90, 60)
    assert kw["images_kwargs"] == {"min_pixels": 280 * 280, "max_pixels": 280 * 280}
    assert images_kwargs([POSTS[2]], family="qwen2_5_vl", image_size=280) == {}


def test_chain_items_share_the_image_path(tiny_qwen_dir):
    _, processor = load_tiny(tiny_qwen_dir)
    post = POSTS[0]
    served = encode_batch(processor, [post], [reasoning_prompt(post)], family="qwen2_5_vl", image_size=56)
    trained = collate_items(processor, [Item(post, reasoning_prompt(post), "a chain")], family="qwen2_5_vl",
                            image_size=56)
    assert torch.equal(served["pixel_values"], trained["pixel_values"])
