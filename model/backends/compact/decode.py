"""Greedy batched decoding for the compact chain writer, faster than ``generate`` on CPU.

``transformers``' ``generate`` recomputes every prompt in full and keeps finished rows in the
batch until its longest chain ends. On two CPU cores both cost real time, so this decoder:

* caches the key/values of the prompt prefix every chain request shares (system turn and
  instruction) once, and starts each batch from a copy of it;
* computes the output layer only for the last prompt position (``logits_to_keep=1``);
* drops finished rows from the batch and its cache as soon as they emit the end token;
* runs the prompt pass in chunks of ``prefill_rows`` rows, which keeps peak memory down (a
  32-row prompt pass in one piece took about 1.5 GB of transient memory).

It is exact greedy decoding: the tokens are those ``generate(do_sample=False)`` picks (a test
checks this on a tiny model in fp32; in bf16 a different batch shape can change rounding).
The model should use eager attention: with a padding mask, PyTorch's CPU SDPA takes a slow
path that made each decode step about twice as long (measured in docs/benchmarks.md). The
compact backend uses ``grouped_eager`` (model/kernels/attention.py), eager attention without
the per-head copy of the key/value cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache


class GreedyDecoder:
    """Greedy decoding of many prompts that start with the same ``prefix`` text."""

    def __init__(self, model, tokenizer, prefix: str = "", prefill_rows: int = 8) -> None:
        self.model, self.tok = model, tokenizer
        self.prefill_rows = prefill_rows
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        self.prefix_ids: list[int] = tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        self._prefix_kv = None

    def _prefix_cache(self):
        if self._prefix_kv is None and self.prefix_ids:
            ids = torch.tensor([self.prefix_ids], device=self.model.device)
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self._prefix_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return DynamicCache(ddp_cache_data=self._prefix_kv) if self._prefix_kv else DynamicCache()

    def _split(self, prompt: str) -> list[int]:
        ids = self.tok(prompt, add_special_tokens=False).input_ids
        p = len(self.prefix_ids)
        if ids[:p] != self.prefix_ids:
            raise ValueError("prompt does not start with the decoder's cached prefix")
        return ids[p:]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop_ids: frozenset[int] = frozenset()
                 ) -> list[list[int]]:
        """The greedy continuation of each prompt (token ids, without the end token). A row also
        ends at a token of ``stop_ids`` (e.g. every token holding a newline), which is not kept."""
        if not prompts:
            return []
        dev = self.model.device
        rest = [self._split(p) for p in prompts]
        b, p, width = len(rest), len(self.prefix_ids), max(1, max(len(r) for r in rest))
        ids = torch.full((b, width), self.pad, dtype=torch.long)
        mask = torch.zeros((b, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for i, r in enumerate(rest):  # left padding, after the shared prefix
            if r:
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, p + width - len(r):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, p:]
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        # the prompt pass in chunks of rows: its activations, not the weights, set the peak memory
        kv, logits = [], []
        for s in range(0, b, self.prefill_rows):
            rows = slice(s, s + self.prefill_rows)
            cache = self._prefix_cache()
            if p and ids[rows].shape[0] > 1:
                cache.batch_repeat_interleave(ids[rows].shape[0])
            o = self.model(input_ids=ids[rows], attention_mask=mask[rows], position_ids=pos[rows],
                           past_key_values=cache, use_cache=True, logits_to_keep=1)
            kv.append([(layer.keys, layer.values) for layer in o.past_key_values.layers])
            logits.append(o.logits)
        cache = DynamicCache(ddp_cache_data=[
            (torch.cat([c[i][0] for c in kv]), torch.cat([c[i][1] for c in kv])) for i in range(len(kv[0]))
        ]) if len(kv) > 1 else o.past_key_values
        del kv, o
        logits = torch.cat(logits)
        alive = torch.arange(b)
        next_pos = pos[:, -1] + 1
        result: list[list[int]] = [[] for _ in range(b)]
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            done = nxt == self.eos
            if stop_ids:
                done = done | torch.tensor([t in stop_ids for t in nxt.tolist()], device=done.device)
            for row, tok_id, fin in zip(alive.tolist(), nxt.tolist(), done.tolist()):
                if not fin:
                    result[row].append(tok_id)
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, nxt, mask, next_pos = alive[keep.cpu()], nxt[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
            logits = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                                past_key_values=cache, use_cache=True).logits
            next_pos = next_pos + 1
        return result
