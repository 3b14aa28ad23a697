"""Attention functions registered with transformers' ``AttentionInterface``.

* :data:`PACKED_SDPA` (the HF backend): Qwen2-VL / Qwen2.5-VL vision towers attend within
  windows (and, every few blocks, within each image). With ``flash_attention_*`` they pass the
  window boundaries (``cu_seqlens``) to one variable-length kernel; with ``sdpa`` or ``eager``
  transformers loops in Python over every window of every image, about 2,000 small attention
  calls per batch of 8 images at 280 x 280 on the 3B shape. :func:`packed_sdpa_forward` takes the
  same ``cu_seqlens`` and runs **one** SDPA call: each window padded to the longest one, the
  padded keys masked out, the outputs unpacked again, so the result equals the loop (tests check
  it). On an H100 at the 3B shape that gave 1.36-1.42x labels-only posts/s (docs/benchmarks.md).
  The name contains "flash" because that is how the Qwen vision code decides to pass
  ``cu_seqlens`` in one call; it only ever receives vision-tower calls
  (:func:`use_packed_vision_attention` sets it on the vision sub-config alone, and the text model
  keeps its own implementation).
* :data:`GROUPED_EAGER` (the compact chain writer): eager attention for grouped-query decoders
  without copying the key/value cache for each query head (:func:`grouped_eager_forward`).

Both need no extra package and run on CPU and GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..backends.hf import QWEN_FAMILIES

#: Name under which :func:`packed_sdpa_forward` is registered with transformers.
PACKED_SDPA = "flash_packed_sdpa"

#: Families whose vision tower takes ``cu_seqlens`` (window / per-image attention): the Qwen-VL ones.
PACKED_FAMILIES = QWEN_FAMILIES


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over packed sequences in one SDPA call.

    ``query``/``key``/``value``: ``(1, heads, total, dim)``, the sequences given by
    ``cu_seq_lens_q`` (cumulative lengths, starting at 0) laid end to end. Returns
    ``(output (1, total, heads, dim), None)``, the layout transformers' attention functions use.
    """
    if cu_seq_lens_q is None:
        raise ValueError(f"{PACKED_SDPA} is for vision towers that pass cu_seqlens; "
                         "use it on the vision sub-config only")
    if cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_q, cu_seq_lens_k):
        raise ValueError(f"{PACKED_SDPA} needs the same query and key segments")
    _, heads, total, dim = query.shape
    cu = cu_seq_lens_q.to(device=query.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    n, width = lengths.numel(), int(lengths.max())
    # token t belongs to segment seg[t] at offset t - cu[seg[t]]; slot = seg * width + offset
    seg = torch.repeat_interleave(torch.arange(n, device=query.device), lengths, output_size=total)
    slot = seg * width + torch.arange(total, device=query.device) - cu[seg]

    def pack(x: torch.Tensor) -> torch.Tensor:
        buf = x.new_zeros(n * width, heads, dim)
        buf[slot] = x[0].transpose(0, 1)
        return buf.view(n, width, heads, dim).transpose(1, 2)  # (n, heads, width, dim)

    valid = torch.arange(width, device=query.device)[None, :] < lengths[:, None]  # (n, width)
    out = F.scaled_dot_product_attention(
        pack(query), pack(key), pack(value), attn_mask=valid[:, None, None, :],
        dropout_p=dropout if module.training else 0.0, scale=scaling,
    )
    out = out.transpose(1, 2).reshape(n * width, heads, dim)[slot]  # (total, heads, dim)
    return out.unsqueeze(0), None


#: Name under which :func:`grouped_eager_forward` is registered with transformers.
GROUPED_EAGER = "grouped_eager"


def grouped_eager_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``eager_attention_forward`` for grouped-query attention, without
    ``repeat_kv``.

    The eager function copies every key/value head ``groups`` times (``repeat_kv``) before its
    two matmuls. During decoding that copies the whole cache in every layer at every step. This
    function folds the query heads of a group into the rows of one matmul against their shared
    key/value head instead: the same products and the same float32 softmax, and no copy. For
    SmolLM2-135M (9 query heads, 3 key/value heads) at 64 rows x 160 cached positions in bf16, one
    call took 0.7 ms against 9 ms (``docs/benchmarks.md``).

    Shapes: ``query (b, heads, q, d)``, ``key``/``value`` ``(b, kv_heads, k, d)``, additive
    ``attention_mask (b, 1, q, k)``. Returns ``(output (b, q, heads, d), weights (b, heads, q, k))``
    like the eager function.
    """
    b, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # head h = kv * groups + g (repeat_kv's order); rows of one kv head: (g, position)
    q = query.reshape(b, kv_heads, groups * q_len, dim)
    weights = torch.matmul(q, key.transpose(2, 3)) * scaling  # (b, kv, groups * q, k)
    weights = weights.view(b, kv_heads, groups, q_len, k_len)
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, None, :, :k_len]
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights.view(b, kv_heads, groups * q_len, k_len), value)  # (b, kv, groups * q, d)
    out = out.view(b, heads, q_len, dim).transpose(1, 2).contiguous()
    return out, weights.view(b, heads, q_len, k_len)


def register() -> None:
    """Register :func:`packed_sdpa_forward` and :func:`grouped_eager_forward` with transformers
    (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionInterface.register(GROUPED_EAGER, grouped_eager_forward)
    AttentionMaskInterface.register(GROUPED_EAGER, eager_mask)  # the additive mask eager attention takes


def use_packed_vision_attention(model: Any) -> bool:
    """Switch a Qwen-VL model's vision tower to :data:`PACKED_SDPA` when it would otherwise loop
    over windows (``sdpa`` / ``eager``); flash-attn and other choices are left alone. Returns
    whether it switched."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    if getattr(config, "model_type", None) not in PACKED_FAMILIES or vision is None:
        return False
    current = getattr(vision, "_attn_implementation", None)
    if current not in (None, "sdpa", "eager"):
        return False
    register()
    model.set_attn_implementation({"vision_config": PACKED_SDPA})
    return model.config.vision_config._attn_implementation == PACKED_SDPA
