"""How a post becomes model inputs, for serving and training alike: the image made safe and
shrunk, the prompt rendered with the model's chat template, the batch encoded by the processor.

One code path on purpose: a student is served on exactly the pixels and tokens it was trained
on (``tests/model/test_hf_inputs.py`` checks that the tensors are identical).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...types import PostInput
from . import IDEFICS3, QWEN_FAMILIES

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def prepare_image(image: Image.Image, *, min_side: int = 28, max_ratio: float = 50.0,
                  max_side: int | None = None) -> Image.Image:
    """Make any PIL image safe for the VLM image processors: RGB (transparent pixels on white,
    palette/greyscale/1-bit converted), at least ``min_side`` pixels on each side, and an aspect
    ratio of at most ``max_ratio`` (Qwen's processor refuses > 200; extreme strips are padded
    with white). With ``max_side``, larger images are first shrunk (aspect kept) so the
    processors never turn a full-size photo into a float array."""
    from PIL import Image

    im = image
    if max_side and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.BICUBIC, reducing_gap=2.0)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        im = bg
    elif im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if w < 1 or h < 1:  # pragma: no cover - PIL does not make these
        im = Image.new("RGB", (min_side, min_side), (255, 255, 255))
        w, h = im.size
    if max(w, h) / min(w, h) > max_ratio:
        nw, nh = (w, math.ceil(w / max_ratio)) if w > h else (math.ceil(h / max_ratio), h)
        canvas = Image.new("RGB", (max(nw, w), max(nh, h)), (255, 255, 255))
        canvas.paste(im, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        im = canvas
        w, h = im.size
    if min(w, h) < min_side:
        scale = min_side / min(w, h)
        im = im.resize((max(min_side, round(w * scale)), max(min_side, round(h * scale))), Image.BICUBIC)
    return im


def messages_for(post: PostInput, prompt: str, answer: str | None = None) -> list[dict]:
    """Chat messages for one post: the image (if any) then the prompt text; optionally the
    assistant's answer (for training targets)."""
    content: list[dict] = []
    if post.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": prompt})
    msgs = [{"role": "user", "content": content}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def render_prompt(processor: Any, post: PostInput, prompt: str) -> str:
    """The chat-template text of ``prompt`` for ``post``, ending with the assistant turn start."""
    msgs = messages_for(post, prompt)
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return processor.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def answer_lead(processor: Any) -> str:
    """``" "`` when the chat template's assistant start does not end in whitespace (SmolVLM's
    ``Assistant:``), else ``""``: what precedes a label word or a chain after the prompt."""
    probe = render_prompt(processor, PostInput(text="x"), "x")
    return "" if probe[-1:].isspace() else " "


def image_max_side(image_size: int | None) -> int:
    """The longer side big photos are shrunk to before the processor resizes them: twice the
    model's side (at least 448), which keeps the processor's own resize close to exact while
    it never turns a full-size photo into a float array; 2048 when the size is the model's own."""
    return max(448, 2 * int(image_size)) if image_size else 2048


def images_kwargs(posts: Sequence[PostInput], *, family: str, image_size: int | None) -> dict[str, Any]:
    """The processor's image arguments for ``posts`` (none without images): each image made
    safe by :func:`prepare_image` and shrunk to :func:`image_max_side`, then resized by the
    processor: Qwen to a pixel budget of ``image_size**2`` (min = max pixels, aspect kept, sides
    rounded to 28), Idefics3 to a longest edge of ``image_size``."""
    if not any(p.image is not None for p in posts):
        return {}
    max_side = image_max_side(image_size)
    images = [prepare_image(p.image, max_side=max_side) if p.image is not None else None for p in posts]
    kw: dict[str, Any] = {}
    if family in QWEN_FAMILIES:
        kw["images"] = [im for im in images if im is not None]
        if image_size:
            px = int(image_size) ** 2
            kw["images_kwargs"] = {"min_pixels": px, "max_pixels": px}
    else:
        kw["images"] = [[im] if im is not None else [] for im in images]
        if image_size and family == IDEFICS3:
            kw["images_kwargs"] = {"size": {"longest_edge": int(image_size)}}
    return kw


def encode_rendered(processor: Any, posts: Sequence[PostInput], texts: Sequence[str], *, family: str,
                    image_size: int | None) -> Any:
    """Tokenise texts already rendered with the chat template (left padding), with the posts'
    images (:func:`images_kwargs`). Serving (:func:`encode_batch`) and training
    (``training.mulcot.vlm.collate_items``, which appends the answer) both come through here."""
    batch = processor(text=list(texts), padding=True, return_tensors="pt",
                      **images_kwargs(posts, family=family, image_size=image_size))
    if "mm_token_type_ids" in batch and family not in QWEN_FAMILIES:
        batch.pop("mm_token_type_ids")
    return batch


def encode_batch(
    processor: Any,
    posts: Sequence[PostInput],
    prompts: Sequence[str],
    *,
    family: str,
    image_size: int | None = None,
    device: Any = None,
) -> Any:
    """Tokenise a batch of prompts (chat template, left padding) with its images preprocessed
    together (:func:`images_kwargs`). Returns the processor's ``BatchFeature`` (on ``device`` if
    given)."""
    texts = [render_prompt(processor, p, q) for p, q in zip(posts, prompts)]
    batch = encode_rendered(processor, posts, texts, family=family, image_size=image_size)
    return batch.to(device) if device is not None else batch
