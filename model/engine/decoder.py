"""The text decoder of a loaded HF VLM, run over a static, slotted KV cache.

:class:`SlotDecoder` reads the weights of the model's own modules (``q/k/v/o_proj``, the MLP,
the RMS norms, the embedding and the output layer; nothing is copied) and runs them with its
own cache and attention, so that:

* the KV cache is one static tensor per layer, ``(slots, kv_heads, max_len, head_dim)``; a
  *slot* is one post in flight; rows of a prefill or a decode step say which slot they write;
* every row has its own length and rotary position (continuous refill: rows of a step are at
  different points of their chains);
* the decode step (:meth:`SlotDecoder.step`) reads and writes only static buffers (tokens,
  positions, lengths, the output token table), so it can be captured once in a CUDA graph
  and replayed; the greedy argmax and the three label-token logits are computed inside it and
  only token ids leave the device;
* a prefill returns either the label-token logits of its last position (three columns of the
  output layer, never the full vocabulary) or the argmax of its last position's logits (one
  row per post), never ``(batch, length, vocab)``.

The arithmetic follows transformers' Qwen2 / Llama decoder layers (RMSNorm in float32, rotary
embedding by ``rotate_half``, SDPA with grouped key/value heads), so the engine's greedy tokens
equal ``generate``'s on CPU in float32 (tests/model/test_engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``q``/``k`` ``(b, heads, t, d)``, ``cos``/``sin`` ``(b, t, d)``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


@dataclass
class TextParts:
    """Where a family keeps its language model's parts."""

    embed: Any
    layers: Any
    norm: Any
    lm_head: Any
    rotary: Any
    mrope: bool  # Qwen-VL: rotary positions are (3, batch, length)


def text_parts(model: Any) -> TextParts:
    """The language-model parts of a Qwen2/2.5-VL or Idefics3 (SmolVLM) model."""
    from ..backends.hf import IDEFICS3, QWEN_FAMILIES

    family = model.config.model_type
    inner = model.model
    if family in QWEN_FAMILIES:
        lm = inner.language_model
        return TextParts(lm.embed_tokens, lm.layers, lm.norm, model.lm_head, lm.rotary_emb, True)
    if family == IDEFICS3:
        lm = inner.text_model
        return TextParts(lm.embed_tokens, lm.layers, lm.norm, model.lm_head, lm.rotary_emb, False)
    raise ValueError(f"the engine supports qwen2_5_vl, qwen2_vl and idefics3 models, not {family!r}")


class SlotDecoder:
    """Prefill and decode over a static slotted KV cache (see the module docstring).

    ``n_slots`` rows can be in flight; each holds at most ``max_len`` tokens. ``label_ids``: the
    first token of each label word; ``out_width``: the output token table's width (the chain
    budget plus the steps run between two host reads).
    """

    def __init__(self, model: Any, *, n_slots: int, max_len: int, label_ids: list[int], out_width: int) -> None:
        self.parts = text_parts(model)
        cfg = model.config.get_text_config()
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.n_slots, self.max_len, self.out_width = int(n_slots), int(max_len), int(out_width)
        w = self.parts.embed.weight
        self.device, self.dtype = w.device, w.dtype
        n_layers = len(self.parts.layers)
        shape = (n_layers, self.n_slots, self.kv_heads, self.max_len, self.head_dim)
        self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        dev = self.device
        self.label_ids = torch.tensor(label_ids, device=dev, dtype=torch.long)
        # static decode-step state (graph inputs/outputs)
        self.tokens = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.pos = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.length = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.n_gen = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.out = torch.zeros(self.n_slots, self.out_width, dtype=torch.long, device=dev)
        self.label_logits = torch.zeros(self.n_slots, len(label_ids), dtype=torch.float32, device=dev)
        self.slot_ids = torch.arange(self.n_slots, device=dev)
        self.key_ids = torch.arange(self.max_len, device=dev)
        self.logits: torch.Tensor | None = None  # full logits of the last eager step (teacher forcing)
        # rotary table for text positions (all three Qwen-VL sections equal for text tokens)
        positions = torch.arange(self.max_len + 1, device=dev)[None]
        probe = torch.zeros(1, device=dev, dtype=self.dtype)
        cos, sin = self.rotary(probe, positions)
        self.cos_table, self.sin_table = cos[0], sin[0]

    # ---- helpers ------------------------------------------------------------------------
    @torch.no_grad()
    def rotary(self, x: torch.Tensor, positions: torch.Tensor):
        """cos/sin ``(b, t, d)`` for ``positions`` ``(b, t)`` (text) or ``(3, b, t)`` (Qwen-VL)."""
        if self.parts.mrope and positions.dim() == 2:
            positions = positions[None].expand(3, -1, -1)
        return self.parts.rotary(x, positions)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.parts.embed(ids)

    def _qkv(self, attn: Any, h: torch.Tensor, b: int, t: int):
        q = attn.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def copy_prefix(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write a stored prefix's keys/values ``(layers, kv_heads, P, d)`` into ``slots``."""
        n = k.shape[2]
        self.k[:, slots, :, :n] = k[:, None]
        self.v[:, slots, :, :n] = v[:, None]

    # ---- prefill ------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
                starts: torch.Tensor, lengths: torch.Tensor, *, want: str) -> torch.Tensor:
        """Run ``embeds`` ``(b, t, hidden)`` (right-padded; row ``i`` has ``lengths[i]`` real
        tokens) into ``slots`` at cache positions ``starts[i] + j``, attending causally to
        everything the slot holds before them. ``want``: ``"labels"`` (the three label-token
        logits at the last real token, float32 ``(b, 3)``), ``"argmax"`` (the greedy next token
        ``(b,)``) or ``"logits"`` (the last real token's full logits ``(b, vocab)``, for checks)."""
        b, t, _ = embeds.shape
        kpos = starts[:, None] + torch.arange(t, device=embeds.device)[None]  # (b, t)
        # keys up to the last written position, rounded up to a multiple of 64 (the masked
        # attention kernels want aligned mask rows; fewer distinct shapes)
        lk = min(self.max_len, -(-(int(kpos.max()) + 1) // 64) * 64)
        mask = (self.key_ids[:lk][None, None, :] <= kpos[:, :, None])[:, None]  # (b, 1, t, lk)
        srow = slots[:, None].expand(b, t)
        x = embeds
        for li, layer in enumerate(self.parts.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer.self_attn, h, b, t)
            q, k = _rope(q, k, cos, sin)
            self.k[li][srow, :, kpos] = k.transpose(1, 2)
            self.v[li][srow, :, kpos] = v.transpose(1, 2)
            groups = self.heads // self.kv_heads
            keys = self.k[li][slots, :, :lk].repeat_interleave(groups, dim=1)
            vals = self.v[li][slots, :, :lk].repeat_interleave(groups, dim=1)
            a = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=self.scale)
            x = x + layer.self_attn.o_proj(a.transpose(1, 2).reshape(b, t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = x[torch.arange(b, device=x.device), lengths - 1]  # (b, hidden)
        h = self.parts.norm(last)
        if want == "labels":
            return F.linear(h, self.parts.lm_head.weight[self.label_ids]).float()
        logits = self.parts.lm_head(h).float()
        return logits if want == "logits" else logits.argmax(-1)

    # ---- decode -------------------------------------------------------------------------
    def _decode_attention(self, q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor):
        """One query per row against its slot's cache: ``q`` ``(b, heads, 1, d)``,
        ``keys``/``vals`` ``(b, kv_heads, lk, d)`` (views of the cache), ``mask`` ``(b, 1, 1, lk)``.

        The query heads of a group are folded into SDPA's query-length axis - ``(b, kv_heads,
        groups, d)`` against their shared key/value head - so the cache is read once and never
        copied per head, and the fused kernel keeps scores and softmax in float32 (a plain bf16
        matmul would round every score to bf16). Returns ``(b, heads * d)`` in head order."""
        b, kvh = q.shape[0], self.kv_heads
        qg = q.reshape(b, kvh, self.heads // kvh, self.head_dim)
        out = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=mask, scale=self.scale)
        return out.reshape(b, self.heads * self.head_dim)

    @torch.no_grad()
    def step(self, nb: int, lk: int, keep_logits: bool = False) -> None:
        """One greedy decode step for slots ``[0, nb)`` attending to cache positions ``[0, lk)``.

        Reads ``tokens``/``pos``/``length``, writes the new token into ``out[slot, n_gen]`` and
        ``tokens``, the label-token logits into ``label_logits``, and advances ``pos``,
        ``length`` and ``n_gen``: static buffers only, so the step can be graph-captured. Slots
        that are not in flight compute garbage in their own cache rows and are ignored."""
        tok, pos, length = self.tokens[:nb], self.pos[:nb], self.length[:nb]
        slots = self.slot_ids[:nb]
        x = self.embed(tok)[:, None, :]
        cos, sin = self.cos_table[pos][:, None, :], self.sin_table[pos][:, None, :]
        mask = (self.key_ids[:lk][None, :] <= length[:, None])[:, None, None, :]
        for li, layer in enumerate(self.parts.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer.self_attn, h, nb, 1)
            q, k = _rope(q, k, cos, sin)
            self.k[li][slots, :, length] = k[:, :, 0]
            self.v[li][slots, :, length] = v[:, :, 0]
            a = self._decode_attention(q, self.k[li][:nb, :, :lk], self.v[li][:nb, :, :lk], mask)
            x = x + layer.self_attn.o_proj(a.reshape(nb, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        h = self.parts.norm(x[:, 0])
        logits = self.parts.lm_head(h).float()
        if keep_logits:
            self.logits = logits
        nxt = logits.argmax(-1)
        self.label_logits[:nb] = logits[:, self.label_ids]
        col = self.n_gen[:nb].clamp(max=self.out_width - 1)
        self.out[slots, col] = nxt
        self.tokens[:nb] = nxt
        self.n_gen[:nb] += 1
        self.pos[:nb] += 1
        self.length[:nb] = (length + 1).clamp(max=self.max_len - 1)
