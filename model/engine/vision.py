"""The vision tower, run once per post and batched over a whole admission group.

Qwen2/2.5-VL: all the group's images go through ``model.model.visual`` in one call; every
block's attention (window or full) is one variable-length attention call over all windows of
all images: :data:`VARLEN` is registered with transformers' ``AttentionInterface`` for the
vision sub-config only. On CUDA in bf16/fp16 it calls ``torch.nn.attention.varlen.varlen_attn``
(torch >= 2.10); elsewhere it falls back to the packed SDPA of
:func:`model.kernels.attention.packed_sdpa_forward` (one padded SDPA call, the same result).

Idefics3 (SmolVLM): its SigLIP tower has fixed-size images; the group's images are one batch
through ``get_image_features``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .inputs import QWEN, PostPlan

log = logging.getLogger(__name__)

#: Set to the error text when ``varlen_attn`` failed once (the packed SDPA is used after that).
_VARLEN_ERROR: str | None = None

#: Name under which :func:`varlen_forward` is registered ("flash" in the name makes the Qwen-VL
#: vision code pass ``cu_seqlens`` in one call).
VARLEN = "flash_engine_varlen"


def _packed():
    from ..kernels.attention import packed_sdpa_forward

    return packed_sdpa_forward


def varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def varlen_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, scaling: float | None = None, dropout: float = 0.0,
                   cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                   max_length_q: int | None = None, max_length_k: int | None = None, **kwargs: Any):
    """Packed attention over ``cu_seq_lens_q`` segments in one call. ``query`` etc.
    ``(1, heads, total, dim)``; returns ``((1, total, heads, dim), None)``."""
    if not varlen_available(query.device, query.dtype) or cu_seq_lens_q is None:
        return _packed()(module, query, key, value, attention_mask, scaling, dropout, cu_seq_lens_q,
                         cu_seq_lens_k, **kwargs)
    global _VARLEN_ERROR
    if _VARLEN_ERROR is None:
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
        mx = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # (total, heads, dim)
        try:
            out = varlen_attn(q, k, v, cu, cu, mx, mx, scale=scaling)
            return out.unsqueeze(0), None
        except Exception as exc:  # an unsupported head size / card: the packed SDPA from now on
            _VARLEN_ERROR = f"{type(exc).__name__}: {exc}"
            log.warning("varlen_attn failed (%s); the vision tower uses the packed SDPA", _VARLEN_ERROR)
    return _packed()(module, query, key, value, attention_mask, scaling, dropout, cu_seq_lens_q, cu_seq_lens_k,
                     **kwargs)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_forward)


class VisionRunner:
    """Image features of a group of posts, one tower call (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.family = model.config.model_type
        if self.family in QWEN:
            register()

    def _qwen_tower(self, pv: torch.Tensor, grid: torch.Tensor):
        """The Qwen-VL tower with :data:`VARLEN` attention, the model's own setting restored
        afterwards (the HF student may share the model); flash-attn is left in place."""
        vision = self.model.config.vision_config
        before = getattr(vision, "_attn_implementation", None)
        switch = before in (None, "sdpa", "eager") or "packed" in str(before)
        if switch:
            self.model.set_attn_implementation({"vision_config": VARLEN})
        try:
            visual = self.model.model.visual
            return visual(pv.to(visual.dtype), grid_thw=grid)
        finally:
            if switch and before is not None:
                self.model.set_attn_implementation({"vision_config": before})

    @torch.no_grad()
    def encode(self, plans: list[PostPlan]) -> list[torch.Tensor | None]:
        """Per plan, its image's features ``(image tokens, hidden)`` in the LM's dtype, or None."""
        with_image = [i for i, p in enumerate(plans) if p.pixel_values is not None]
        feats: list[torch.Tensor | None] = [None] * len(plans)
        if not with_image:
            return feats
        inner = self.model.model
        dev = self.model.lm_head.weight.device
        if self.family in QWEN:
            pv = torch.cat([plans[i].pixel_values for i in with_image]).to(dev)
            grid = torch.cat([plans[i].grid_thw for i in with_image]).to(dev)
            out = self._qwen_tower(pv, grid)
            merged = out.pooler_output if hasattr(out, "pooler_output") else out
            sizes = (grid.prod(-1) // inner.visual.spatial_merge_size**2).tolist()
            for i, f in zip(with_image, torch.split(merged, sizes)):
                feats[i] = f
        else:
            pv = torch.cat([plans[i].pixel_values for i in with_image]).to(dev)
            masks = [plans[i].pixel_attention_mask for i in with_image]
            pam = torch.cat(masks).to(dev) if all(m is not None for m in masks) else None
            out = inner.get_image_features(pv, pam).pooler_output  # (images, seq, hidden)
            for i, f in zip(with_image, out):
                feats[i] = f.reshape(-1, f.shape[-1])
        return feats
