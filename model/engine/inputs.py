"""Per-post inputs of the engine, built on CPU threads while the device computes.

One :class:`PostPlan` per post holds the token ids of the label prompt and of the reasoning
prompt (the image placeholder already expanded), the image preprocessed **once** for both, and
(Qwen-VL) the 3-D rotary positions of both prompts. The two prompts share every token up to the
end of the post block (system turn, image, task line, text), so the engine runs that shared part
once per post: see :mod:`model.engine.engine`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from ..backends.hf import QWEN_FAMILIES
from ..backends.hf.inputs import images_kwargs, prepare_image, render_prompt
from ..prompts import label_prompt, reasoning_prompt
from ..types import PostInput

QWEN = QWEN_FAMILIES


def hf_helpers():
    """``(render_prompt, prepare_image)`` of the HF backend (``model.backends.hf.inputs``)."""
    return render_prompt, prepare_image


@dataclass
class PostPlan:
    """What the engine needs to run one post (see the module docstring)."""

    index: int
    label_ids: list[int]
    reason_ids: list[int]
    shared: int  # tokens both prompts share (label_ids[:shared] == reason_ids[:shared])
    pixel_values: torch.Tensor | None = None
    grid_thw: torch.Tensor | None = None  # Qwen-VL (1, 3)
    pixel_attention_mask: torch.Tensor | None = None  # Idefics3
    label_pos: torch.Tensor | None = None  # Qwen-VL (3, len(label_ids))
    reason_pos: torch.Tensor | None = None  # Qwen-VL (3, len(reason_ids))

    @property
    def next_position(self) -> int:
        """The rotary position of the first generated token."""
        if self.reason_pos is not None:
            return int(self.reason_pos.max()) + 1
        return len(self.reason_ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Planner:
    """Builds :class:`PostPlan` s for one model + processor (thread-safe: no shared state is
    written after construction)."""

    def __init__(self, model: Any, processor: Any, *, image_size: int | None, chain_prompt=reasoning_prompt) -> None:
        self.model = model
        self.processor = processor
        self.family = model.config.model_type
        self.image_size = image_size
        self.chain_prompt = chain_prompt
        self.render, self.prepare_image = hf_helpers()
        self.image_token_id = int(model.config.image_token_id)
        # a fast tokenizer's Rust object must not be entered from two threads at once
        # ("Already borrowed"); images are preprocessed outside the lock (Qwen-VL)
        self._lock = threading.Lock()
        if self.family in QWEN:
            ip = processor.image_processor
            self.merge = int(getattr(ip, "merge_size", 2))

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        with self._lock:
            enc = self.processor.tokenizer(texts, add_special_tokens=False)
        return [list(x) for x in enc["input_ids"]]

    def plan(self, index: int, post: PostInput) -> PostPlan:
        with self._lock:
            label_text = self.render(self.processor, post, label_prompt(post))
            reason_text = self.render(self.processor, post, self.chain_prompt(post))
        pv = grid = pam = None
        if post.image is not None:
            # the same image preparation and processor arguments as the HF path (encode_batch)
            kw = images_kwargs([post], family=self.family, image_size=self.image_size)
            image, extra = kw["images"][0], kw.get("images_kwargs", {})
            if self.family in QWEN:
                out = self.processor.image_processor(images=[image], return_tensors="pt", **extra)
                pv, grid = out["pixel_values"], out["image_grid_thw"]
                n = int(grid.prod()) // self.merge**2
                pad = self.processor.image_token
                label_text = label_text.replace(pad, pad * n, 1)
                reason_text = reason_text.replace(pad, pad * n, 1)
                label_ids, reason_ids = self._tokens([label_text, reason_text])
            else:
                with self._lock:
                    out = self.processor(text=[label_text, reason_text], images=[image, image], padding=True,
                                         return_tensors="pt", images_kwargs=extra)
                mask = out["attention_mask"].bool()
                ids = out["input_ids"]
                label_ids, reason_ids = [ids[i][mask[i]].tolist() for i in range(2)]
                pv = out["pixel_values"][:1]
                pam = out.get("pixel_attention_mask")
                pam = pam[:1] if pam is not None else None
        else:
            label_ids, reason_ids = self._tokens([label_text, reason_text])
        shared = common_prefix(label_ids, reason_ids)
        plan = PostPlan(index, label_ids, reason_ids, shared, pv, grid, pam)
        if self.family in QWEN:
            plan.label_pos = self.positions(label_ids, grid)
            plan.reason_pos = self.positions(reason_ids, grid)
        return plan

    def positions(self, ids: list[int], grid: torch.Tensor | None) -> torch.Tensor:
        """Qwen-VL's 3-D rotary positions ``(3, len(ids))`` of one unpadded prompt with at most
        one image: text tokens count up on all three axes; the image's merged tokens take
        (t, row, column) offsets from where the image starts; the text after it resumes at that
        start plus the longer side of the merged grid. The same numbers as transformers'
        ``get_rope_index`` (a test compares them), without its per-token Python loop."""
        t = torch.tensor(ids)
        img = (t == self.image_token_id).nonzero()[:, 0]
        if grid is None or img.numel() == 0:
            return torch.arange(len(ids))[None].expand(3, -1).clone()
        a, n = int(img[0]), int(img.numel())
        gt, gh, gw = (int(x) for x in grid[0])
        lh, lw = gh // self.merge, gw // self.merge
        if grid.shape[0] != 1 or int(img[-1]) - a + 1 != n or gt * lh * lw != n:
            return self.rope_index(ids, grid)
        pos = torch.empty(3, len(ids), dtype=torch.long)
        pos[:, :a] = torch.arange(a)
        tt, hh, ww = torch.meshgrid(torch.arange(gt), torch.arange(lh), torch.arange(lw), indexing="ij")
        pos[:, a : a + n] = torch.stack([tt, hh, ww]).reshape(3, -1) + a
        after = len(ids) - a - n
        pos[:, a + n :] = torch.arange(after) + a + max(gh, gw) // self.merge
        return pos

    def rope_index(self, ids: list[int], grid: torch.Tensor) -> torch.Tensor:
        """transformers' ``get_rope_index`` for one prompt (the reference of :meth:`positions`)."""
        t = torch.tensor([ids])
        mm = (t == self.image_token_id).int()
        pos, _ = self.model.model.get_rope_index(t, mm_token_type_ids=mm, image_grid_thw=grid)
        return pos[:, 0]
