"""Which words of a post moved the served classifier toward its label: occlusion (leave-one-word-out
feature ablation, Captum's ``FeatureAblation``) through the route that served the post.

A post's text is cut into words (runs of non-space characters); the words that can be evidence are
all but retweet markers, @handles, links, the aspect's own words and function words (scikit-learn's
English stop list less negations, intensifiers and :data:`SENTIMENT_BEARING`). Each such word is one feature of
a 0/1 keep-mask; the forward function rebuilds each post's text with the dropped words cut out and
returns the classifier's probability of the served label. A word's score is
``p(label | post) - p(label | post without the word)``: positive when the word pulls toward the label,
negative when it pulls away from it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

MAX_WORDS = 40
"""Most words of a post that are weighed (the first ones; a tweet has fewer)."""
WORD = re.compile(r"\S+")
NOT_EVIDENCE = re.compile(r"^(?:RT|rt|via|@\w+:?|https?://\S+|www\.\S+|&amp;|\W*)$")
EDGE = re.compile(r"^[\"'“”‘’(\[{<]+|[\"'“”‘’)\]}>.,;:!?…]+$")


@dataclass(frozen=True)
class Word:
    start: int
    end: int
    text: str


@dataclass
class TextEvidence:
    """The attribution of one post: its candidate words and their scores (same order)."""

    text: str
    words: list[Word]
    scores: list[float]
    label: int
    """The index of the served label (``model.types.LABELS``)."""
    base: float
    """p(label | post)."""
    phrases: list[tuple[int, int]] = field(default_factory=list)
    """The cited phrases as (first word, last word) indexes, strongest first (:func:`select_quotes`)."""
    against: int | None = None
    """The strongest word that pulls away from the label, if one pulls by ``MIN_WEIGHT``."""
    without_cited: float | None = None
    """p(label | post without the cited words): ERASER's comprehensiveness is ``base`` minus this."""

    @property
    def quotes(self) -> list[str]:
        return [quote(self.text, self.words, s) for s in self.phrases]

    def cited_mask(self) -> list[bool]:
        on = {k for lo, hi in self.phrases for k in range(lo, hi + 1)}
        return [k in on for k in range(len(self.words))]

    def to_dict(self) -> dict:
        return {"quotes": self.quotes, "weights": [round(max(self.scores[lo:hi + 1]), 4) for lo, hi in self.phrases],
                "against": None if self.against is None else self.words[self.against].text,
                "p_label": round(self.base, 4),
                "p_without_cited": None if self.without_cited is None else round(self.without_cited, 4)}


def evidence_words(text: str, aspect: str | None) -> list[Word]:
    """The words of ``text`` that may be evidence, with their character spans."""
    spans = []
    asp = {w.lower() for w in WORD.findall(aspect or "")}
    for m in WORD.finditer(text):
        tok = m.group(0)
        if NOT_EVIDENCE.match(tok):
            continue
        core = EDGE.sub("", tok) or tok
        if core.lower() in asp or core.lower().lstrip("#") in asp or _stop(core):
            continue
        s = m.start() + tok.find(core) if core in tok else m.start()
        spans.append(Word(s, s + len(core), core))
    return spans


def without(text: str, words: Sequence[Word], drop: Sequence[bool]) -> str:
    """``text`` with the words whose ``drop`` flag is set cut out (spaces closed up)."""
    out, last = [], 0
    for w, d in zip(words, drop):
        if d:
            out.append(text[last:w.start])
            last = w.end
    out.append(text[last:])
    return re.sub(r"\s{2,}", " ", "".join(out)).strip()


def only(text: str, words: Sequence[Word], keep: Sequence[bool]) -> str:
    return " ".join(w.text for w, k in zip(words, keep) if k)


def attribute(texts: Sequence[str], aspects: Sequence[str | None], labels: Sequence[int],
              probs_fn: Callable[[list[int], list[str]], torch.Tensor], max_words: int = MAX_WORDS,
              per_eval: int = 64) -> list[TextEvidence]:
    """Leave-one-word-out scores for every post, with Captum's ``FeatureAblation``.

    ``probs_fn(rows, texts)`` gives the classifier's class probabilities ``[len(rows), 3]`` of post
    ``rows[i]`` with its text replaced by ``texts[i]`` (the route that served it, its image evidence
    unchanged). The batch's words are laid side by side as one 0/1 keep-mask (one feature a word);
    the forward function returns the sum over posts of p(served label), recomputing only the posts
    a perturbation touches, so ablating a word of post i changes term i alone and its attribution is
    ``p(label | post) - p(label | post without the word)``. ``per_eval`` ablations share a forward.
    """
    from captum.attr import FeatureAblation

    words = [evidence_words(t, a)[:max_words] for t, a in zip(texts, aspects)]
    B = len(texts)
    base = probs_fn(list(range(B)), list(texts)).double()
    base_p = base[torch.arange(B), torch.as_tensor(list(labels))]
    owner = [i for i, w in enumerate(words) for _ in w]
    first = [sum(len(w) for w in words[:i]) for i in range(B)]
    if not owner:
        return [TextEvidence(texts[i], [], [], int(labels[i]), float(base_p[i])) for i in range(B)]
    total = float(base_p.sum())

    def forward(mask: torch.Tensor) -> torch.Tensor:
        jobs = []  # (perturbation row, post, its text with the dropped words cut out)
        for r, row in enumerate(mask.tolist()):
            for i in sorted({owner[j] for j, k in enumerate(row) if k == 0}):
                keep = row[first[i]:first[i] + len(words[i])]
                jobs.append((r, i, without(texts[i], words[i], [k == 0 for k in keep])))
        out = torch.full((mask.shape[0],), total, dtype=torch.float64)
        if jobs:
            p = probs_fn([i for _, i, _ in jobs], [t for _, _, t in jobs]).double()
            for (r, i, _), q in zip(jobs, p):
                out[r] += q[labels[i]] - base_p[i]
        return out

    attr = FeatureAblation(forward).attribute(
        torch.ones(1, len(owner), dtype=torch.float64), baselines=0.0,
        feature_mask=torch.arange(len(owner)).unsqueeze(0), perturbations_per_eval=per_eval)[0]
    return [TextEvidence(texts[i], words[i], attr[first[i]:first[i] + len(words[i])].tolist(), int(labels[i]),
                         float(base_p[i])) for i in range(B)]


# --------------------------------------------------------------------------- the Text line
MIN_WEIGHT = 0.05
"""A word whose removal moves the label's probability by less than this is not cited as evidence."""
MAX_QUOTES = 3
PHRASE_WORDS = 3
KEEP_NEGATIONS = {"not", "no", "never", "nor", "nothing", "none", "cannot", "without", "least", "against",
                  "less", "very", "too", "most", "much"}


SENTIMENT_BEARING = {"again", "amount", "back", "bill", "cry", "detail", "down", "empty", "enough", "fill", "find",
                     "fire", "first", "found", "full", "get", "give", "interest", "keep", "last", "made", "move",
                     "off", "serious", "show", "side", "sincere", "system", "thick", "thin", "top", "well", "whole"}
"""Words of scikit-learn's English stop list that are not function words and can carry a post's
sentiment ("cry", "empty", "sincere", "again"): weighed and quotable like any other word."""


@functools.cache
def _function_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) - KEEP_NEGATIONS - SENTIMENT_BEARING


def _stop(word: str) -> bool:
    """A function word (never weighed, never quoted) or a lone symbol."""
    w = word.lower().strip("'’")
    return w in _function_words() or not any(c.isalnum() for c in w) and len(w) < 2


def select_quotes(text: str, words: list[Word], scores: list[float], min_weight: float = MIN_WEIGHT
                  ) -> tuple[list[tuple[int, int]], int | None]:
    """The cited phrases as (first word, last word) index ranges, strongest first, and the index of
    the strongest word that pulls against the label (None if none pulls by ``min_weight``).
    ``words`` come from :func:`evidence_words`, so function words are not among them."""
    order = sorted(range(len(words)), key=lambda i: -scores[i])
    used: set[int] = set()
    phrases: list[tuple[int, int]] = []
    for i in order:
        if len(phrases) == MAX_QUOTES or scores[i] < min_weight:
            break
        if i in used:
            continue
        lo = hi = i
        while hi - lo + 1 < PHRASE_WORDS:  # grow into neighbours that pull the same way
            left = lo - 1 if lo > 0 and lo - 1 not in used else None
            right = hi + 1 if hi + 1 < len(words) and hi + 1 not in used else None
            cand = [j for j in (left, right) if j is not None and scores[j] >= max(min_weight / 2, scores[i] / 3)
                    and _adjacent(text, words, min(j, lo), max(j, hi))]
            if not cand:
                break
            j = max(cand, key=lambda j: scores[j])
            lo, hi = min(lo, j), max(hi, j)
        used.update(range(lo, hi + 1))
        phrases.append((lo, hi))
    against = [i for i in order[::-1] if scores[i] <= -min_weight]
    return _merge(text, words, scores, phrases), (against[0] if against else None)


def cite(evidence: list[TextEvidence], probs_fn: Callable[[list[int], list[str]], torch.Tensor],
         min_weight: float = MIN_WEIGHT) -> list[TextEvidence]:
    """Choose each post's cited phrases (:func:`select_quotes`) and measure p(label) without them
    (one batched call of ``probs_fn``, as in :func:`attribute`)."""
    rows, texts = [], []
    for i, ev in enumerate(evidence):
        ev.phrases, ev.against = select_quotes(ev.text, ev.words, ev.scores, min_weight)
        if ev.phrases:
            rows.append(i)
            texts.append(without(ev.text, ev.words, ev.cited_mask()))
    _measure(evidence, rows, texts, probs_fn)
    # phrases that pull one way alone but not together (removing all of them does not lower the
    # label's probability): cite the strongest alone, so the sentence's claim holds as measured
    redo = [i for i in rows if evidence[i].without_cited >= evidence[i].base and len(evidence[i].phrases) > 1]
    for i in redo:
        evidence[i].phrases = evidence[i].phrases[:1]
    _measure(evidence, redo, [without(evidence[i].text, evidence[i].words, evidence[i].cited_mask()) for i in redo],
             probs_fn)
    return evidence


def _measure(evidence: list[TextEvidence], rows: list[int], texts: list[str], probs_fn) -> None:
    if rows:
        for i, q in zip(rows, probs_fn(rows, texts).tolist()):
            evidence[i].without_cited = float(q[evidence[i].label])


def _merge(text: str, words: list[Word], scores: list[float], phrases: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Cited phrases that touch in the text joined into one, strongest first."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(phrases):
        if out and out[-1][1] + 1 == lo and _adjacent(text, words, out[-1][1], lo):
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return sorted(out, key=lambda s: -max(scores[s[0]:s[1] + 1]))


def _adjacent(text: str, words: list[Word], lo: int, hi: int) -> bool:
    """Whether words lo..hi stand next to each other in the text (only spaces between them)."""
    return all(not text[words[k].end:words[k + 1].start].strip(" ") for k in range(lo, hi))


def quote(text: str, words: list[Word], span: tuple[int, int]) -> str:
    return text[words[span[0]].start:words[span[1]].end]


def listing(items: list[str]) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``: quoted words as a sentence lists them."""
    q = [f"'{x}'" for x in items]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + f" and {q[-1]}"


def text_sentence(ev: TextEvidence, label: str) -> str:
    """The Text line from the evidence: the cited words and which way they pull, with the label's
    probability with and without them; or that the text carries little sentiment."""
    if not ev.text.strip():
        return "There is no text with this post."
    if not ev.words:
        return "The text has no words to weigh (only handles, links or symbols)."
    if not ev.phrases:
        # the claim must hold as measured: a word pulling the other way may move the probability
        # more, so name the word that raises it most
        top = max(range(len(ev.words)), key=lambda i: ev.scores[i])
        out = f"The text itself carries little sentiment: no word of it raises the {label} probability "
        most = ev.scores[top]
        out += (f"by {MIN_WEIGHT:.2f} or more (the most, '{ev.words[top].text}', by "
                f"{f'{most:.2f}' if most >= 0.005 else 'under 0.01'})" if most > 0 else "at all")
        if ev.against is not None:
            out += f"; '{ev.words[ev.against].text}' pulls the other way"
        return out + "."
    quotes = ev.quotes
    many = len(quotes) > 1
    verb = {"positive": "read" if many else "reads", "negative": "read" if many else "reads",
            "neutral": "keep" if many else "keeps"}[label]
    tail = {"positive": "positive", "negative": "negative", "neutral": "it neutral"}[label]
    out = f"In the text, {listing(quotes)} {verb} {tail}"
    if ev.without_cited is not None:
        move = "falls" if ev.without_cited < ev.base else "goes"
        out += (f": without {'them' if many else 'it'} the {label} probability {move} from {ev.base:.2f} "
                f"to {ev.without_cited:.2f}")
    if ev.against is not None:
        out += f"; '{ev.words[ev.against].text}' pulls the other way"
    return out + "."
