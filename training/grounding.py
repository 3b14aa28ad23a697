"""Grounding metrics: does the chain's Image field say only what the student could see?

Each post with an image is run three times through the student (labels and chains): with its
own image, with another post's image (a seeded derangement of the evaluated posts that never
gives a post its own image file: ``swap_partners``), and with no image. From the three runs:

* ``no_image_honest``: share of the no-image chains whose Image field states there is no image;
* ``swap_changed``: share of posts whose Image field changes when another image is given;
* ``swap_jaccard``: mean Jaccard similarity of the content words of the two Image fields
  (own vs swapped). Content words: lower-cased letter words minus English stopwords,
  :data:`GENERIC` image vocabulary and the words found in over half of all the Image lines of the
  two runs (``image_template_words``), so that a fixed template around grounded content is not
  counted as similarity. ``swap_jaccard_raw`` is the same with stopwords removed only;
* ``label_flip_swapped``: share of labels that change when the image is swapped;
* ``visual_claims``: share of own-image chains whose Text or Conclusion line (the chain writer's
  own lines) uses a word that describes pixels (:data:`VISUAL_CLAIMS`, a keyword reading);
* ``conflict_rate``: share of own-image chains whose Conflict field names a conflict between
  text and image (:func:`names_conflict`, a keyword reading), next to ``teacher_conflict_rate``,
  the same reading of the teacher's Conflict_resolution on the same posts where the data has
  teacher chains;
* parse rate and label agreement of every run's chains;
* the evidence of the own-image chains (:func:`evidence_metrics`): ``text_cites`` (share of posts
  with text whose Text line quotes a word of the post, the aspect excluded), ``distinct_text_lines``
  (share of unique Text lines), ERASER's ``comprehensiveness`` and ``sufficiency`` of the cited
  words (DeYoung et al., 2020) beside the same figures for as many random words of the post
  (students that expose ``text_evidence``, the compact one), and ``ocr_quoted`` (share of pictures
  with readable text whose Image line quotes some of it).

``python -m training.grounding --student default --data ../shared/data/mvsa_single/dev.jsonl
--limit 60 --out runs/grounding_mvsa`` (``mulcot distill evaluate --grounding`` runs the same).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from pydantic import Field

from .options import Options
from .recipe import StrictModel

GENERIC = frozenset("""
image images picture pictures photo photos photograph photographs shows show showing shown appears appear
appearing depicts depict depicting depicted visible post posts text tweet classifier classifiers guess guesses
best main colour colours color colors confidence low likely possibly seems scene displays display displayed
features featuring contains containing includes including overall visual visually
""".split())
"""Generic image and template vocabulary left out of the content words (besides stopwords)."""

VISUAL_CLAIMS = frozenset("""
depicts depicted depicting shows showing shown smiling smile smiles wearing posing pictured scene background
colorful expression expressions visual visually
""".split())
"""Words that describe what pixels show. ``visual_claims`` counts own-image chains whose Text or
Conclusion line (the lines the chain writer writes) uses one: the Image line is written from
the evidence, so a visual claim in those lines is the writer's own (a keyword reading)."""
IMAGE_MENTIONS = frozenset("image images picture pictures photo photos photograph photographs".split())

_WORD = re.compile(r"[a-z]{2,}")
_NO_IMAGE = re.compile(
    r"\bno (?:image|picture|photo)\b|\bwithout (?:an? )?(?:image|picture|photo)\b|"
    r"\b(?:image|picture|photo) (?:is|was) (?:not|missing|absent)|\bnot (?:have|has|include|contain) an? (?:image|picture)",
    re.IGNORECASE,
)
_NO_CONFLICT = re.compile(
    r"\bno (?:\w+ ){0,2}(?:conflict|contradiction|discrepanc\w*|tension|mismatch|inconsistenc\w*)|"
    r"\bnot? (?:\w+ ){0,2}(?:conflict|contradict)\w*|\bdoes not conflict|\bwithout (?:any )?conflict",
    re.IGNORECASE,
)
_CONFLICT = re.compile(r"conflict|contradict|discrepanc|mismatch|tension|inconsisten|contrast", re.IGNORECASE)


def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def content_words(text: str | None, *, generic: bool = True) -> set[str]:
    """Lower-cased letter words (two letters or more) of ``text`` minus stopwords (and :data:`GENERIC` words)."""
    drop = _stopwords() | (GENERIC if generic else frozenset())
    return {w for w in _WORD.findall((text or "").lower()) if w not in drop}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def states_no_image(text: str | None) -> bool:
    """Whether an Image field says that there is no image."""
    return bool(_NO_IMAGE.search(text or ""))


def names_conflict(text: str | None) -> bool:
    """Whether a Conflict field names a conflict between text and image (keyword reading: a
    conflict word not under a negation such as "no conflict" / "does not contradict")."""
    text = text or ""
    if _NO_CONFLICT.search(text):
        return False
    return bool(_CONFLICT.search(text))


def claims_pixels(text: str | None, *, mentions: bool = False) -> bool:
    """Whether ``text`` uses a :data:`VISUAL_CLAIMS` word (with ``mentions``, also a plain mention
    of an image: the stricter reading that filters training targets)."""
    words = set(_WORD.findall((text or "").lower()))
    return bool(words & (VISUAL_CLAIMS | (IMAGE_MENTIONS if mentions else frozenset())))


def derangement(n: int, seed: int = 0) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (n >= 2): post i gets image perm[i]."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for k in range(n):  # each post takes the image of the next one in the shuffled cycle
        perm[order[k]] = order[(k + 1) % n]
    return perm


def swap_partners(images: Sequence[object], seed: int = 0) -> list[int]:
    """A seeded derangement in which post i gets the image of post perm[i], with perm[i] also
    holding a *different image* where the posts allow it (Twitter-2015 repeats one tweet's image
    for each of its aspects)."""
    perm = derangement(len(images), seed)
    for i in range(len(perm)):
        if images[perm[i]] != images[i]:
            continue
        for j in range(len(perm)):  # trade partners with a post for which both trades differ
            if j != i and images[perm[j]] != images[i] and images[perm[i]] != images[j]:
                perm[i], perm[j] = perm[j], perm[i]
                break
    return perm


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def grounding_metrics(own, swapped, none, teacher_chains: Sequence[str | None] = ()) -> dict[str, Any]:
    """The metrics from three lists of predictions over the same posts (own image, another
    post's image, no image); ``teacher_chains``: the posts' teacher chains, if any."""
    from model import parse_chain

    def img(p):
        return p.chain.image_analysis if p.chain is not None else None

    def parsed(p):
        return p.chain is not None and (parse_chain(p.chain.raw).parsed if p.chain.raw else p.chain.parsed)

    def agrees(p):
        return p.chain is not None and p.chain.prediction == p.label.value

    # the fixed template: content words found in over half of all the Image lines of the two runs
    lines = [content_words(img(p)) for p in (*own, *swapped)]
    df = Counter(w for ws in lines for w in ws)
    template = {w for w, c in df.items() if c > len(lines) / 2}
    jac = [jaccard(content_words(img(a)) - template, content_words(img(b)) - template) for a, b in zip(own, swapped)]
    jac_raw = [jaccard(content_words(img(a), generic=False), content_words(img(b), generic=False))
               for a, b in zip(own, swapped)]
    teacher = [parse_chain(t).conflict_resolution for t in teacher_chains if t]
    runs = {"own": own, "swapped": swapped, "no_image": none}
    return {
        "n": len(own),
        "no_image_honest": _rate([states_no_image(img(p)) for p in none]),
        "own_image_says_none": _rate([states_no_image(img(p)) for p in own]),
        "swap_changed": _rate([(img(a) or "") != (img(b) or "") for a, b in zip(own, swapped)]),
        "swap_identical": _rate([(img(a) or "") == (img(b) or "") for a, b in zip(own, swapped)]),
        "swap_jaccard": sum(jac) / len(jac) if jac else None,
        "swap_jaccard_raw": sum(jac_raw) / len(jac_raw) if jac_raw else None,
        "image_template_words": sorted(template),
        "label_flip_swapped": _rate([a.label != b.label for a, b in zip(own, swapped)]),
        "label_flip_no_image": _rate([a.label != b.label for a, b in zip(own, none)]),
        "conflict_rate": _rate([names_conflict(p.chain.conflict_resolution) for p in own if p.chain is not None]),
        "conflict_rate_no_image": _rate([names_conflict(p.chain.conflict_resolution) for p in none if p.chain is not None]),
        "visual_claims": _rate([claims_pixels(p.chain.text_analysis) or claims_pixels(p.chain.final_conclusion)
                                for p in own if p.chain is not None]),
        "teacher_conflict_rate": _rate([names_conflict(t) for t in teacher]),
        "teacher_n": len(teacher),
        "parse_rate": {k: _rate([parsed(p) for p in v]) for k, v in runs.items()},
        "agreement": {k: _rate([agrees(p) for p in v]) for k, v in runs.items()},
    }


_QUOTED = re.compile(r"(?:^|(?<=[\s(]))['‘\"“](.+?)['’\"”](?=[\s,.;:!?)]|$)")


def quoted_spans(line: str | None) -> list[str]:
    """The spans a line puts in quotes ('...', "...", typographic quotes; an apostrophe inside a
    word does not end a quote)."""
    return _QUOTED.findall(line or "")


def cites_text(line: str | None, text: str, aspect: str | None) -> bool:
    """Whether ``line`` quotes a span of ``text`` with a word outside the aspect."""
    low, asp = text.lower(), set(_WORD.findall((aspect or "").lower()))
    return any(q.strip() and q.lower() in low and set(_WORD.findall(q.lower())) - asp for q in quoted_spans(line))


def evidence_metrics(student, posts: Sequence, preds: Sequence, seed: int = 0) -> dict[str, Any]:
    """The Text line's citations and their faithfulness, and the Image line's OCR quotes, over
    ``preds`` (chains of ``posts``)."""
    with_text = [(p, pr) for p, pr in zip(posts, preds) if p.text.strip() and pr.chain is not None]
    lines = [pr.chain.text_analysis for _, pr in with_text]
    out: dict[str, Any] = {
        "text_cites": _rate([cites_text(pr.chain.text_analysis, p.text, p.aspect) for p, pr in with_text]),
        "distinct_text_lines": len(set(lines)) / len(lines) if lines else None,
    }
    if hasattr(student, "text_evidence") and with_text:
        out.update(faithfulness(student, [p for p, _ in with_text], [pr for _, pr in with_text], seed))
    readable = [(p, pr) for p, pr in zip(posts, preds) if (pr.extra.get("image_evidence") or {}).get("ocr") in ("read", "none")]
    if readable:
        out.update(ocr_quoted(readable))
    return out


def faithfulness(student, posts: list, preds: list, seed: int = 0) -> dict[str, Any]:
    """ERASER's comprehensiveness (p(label | post) - p(label | post without the cited words)) and
    sufficiency (p(label | post) - p(label | only the cited words)), each beside the same figure
    for the same number of the post's words drawn at random (seeded), over posts that cite words."""
    import numpy as np

    from model.backends.compact.attribution import only, without

    evs = student.text_evidence(posts, preds)
    fn = student.text_probs_fn(posts, preds)
    rng = random.Random(seed)
    rows, texts = [], {"without": [], "only": [], "rand_without": [], "rand_only": []}
    for i, ev in enumerate(evs):
        cited = ev.cited_mask()
        k = sum(cited)
        if not k:
            continue
        pick = set(rng.sample(range(len(ev.words)), k))
        rand = [j in pick for j in range(len(ev.words))]
        rows.append(i)
        texts["without"].append(without(ev.text, ev.words, cited))
        texts["only"].append(only(ev.text, ev.words, cited))
        texts["rand_without"].append(without(ev.text, ev.words, rand))
        texts["rand_only"].append(only(ev.text, ev.words, rand))
    if not rows:
        return {"faithfulness_n": 0}
    base = np.array([evs[i].base for i in rows])
    lab = [evs[i].label for i in rows]
    res: dict[str, Any] = {"faithfulness_n": len(rows)}
    for key, ts in texts.items():
        p = fn(rows, ts).detach().numpy()[np.arange(len(rows)), lab]
        res[f"{'comprehensiveness' if 'without' in key else 'sufficiency'}{'_random' if key.startswith('rand') else ''}"] = \
            float(np.mean(base - p))
    return res


def ocr_quoted(rows: list) -> dict[str, Any]:
    """Share of pictures whose OCR found legible text (the reader's own thresholds: ``ocr`` state
    ``read``) whose Image line quotes it, over the pictures OCR ran on."""
    read = [(p, pr) for p, pr in rows if pr.extra["image_evidence"].get("text")]
    quoted = [bool(quoted_spans(pr.chain.image_analysis)) for _, pr in read if pr.chain is not None]
    return {"ocr_ran": len(rows), "ocr_read": len(read), "ocr_quoted": _rate(quoted)}


def evaluate_grounding(student, examples, *, batch_size: int = 16, seed: int = 0, out_dir: str | Path | None = None,
                       image_max_side: int | None = None) -> dict[str, Any]:
    """Run ``student`` (a Student or spec) on the posts of ``examples`` that have an image, three
    ways, and return (and write to ``out_dir/grounding.json``) the grounding metrics."""
    from model import load_student

    if isinstance(student, str):
        student = load_student(student)
    ex = [e for e in examples if e.image_path is not None]
    if len(ex) < 2:
        raise ValueError("grounding metrics need at least two posts with images")
    perm = swap_partners([str(e.image_path) for e in ex], seed)
    own_posts = [e.post(max_side=image_max_side) for e in ex]
    runs: dict[str, list] = {"own": [], "swapped": [], "no_image": []}
    for s in range(0, len(ex), batch_size):
        idx = range(s, min(s + batch_size, len(ex)))
        own = [own_posts[i] for i in idx]
        runs["own"] += student.predict(own, chain=True)
        runs["swapped"] += student.predict([replace(own_posts[i], image=own_posts[perm[i]].image) for i in idx], chain=True)
        runs["no_image"] += student.predict([replace(own_posts[i], image=None) for i in idx], chain=True)
    report = grounding_metrics(runs["own"], runs["swapped"], runs["no_image"], [e.teacher_cot for e in ex])
    report.update(evidence_metrics(student, own_posts, runs["own"], seed))
    report["seed"] = seed
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "grounding.json").write_text(json.dumps(report, indent=2))
        with (out / "grounding_chains.jsonl").open("w") as f:
            for i, e in enumerate(ex):
                f.write(json.dumps({
                    "id": e.id, "swapped_with": ex[perm[i]].id, "label": runs["own"][i].label.value,
                    "text_line": runs["own"][i].chain.text_analysis if runs["own"][i].chain else None,
                    **{k: {"label": v[i].label.value, "image": v[i].chain.image_analysis if v[i].chain else None,
                           "conflict": v[i].chain.conflict_resolution if v[i].chain else None,
                           "raw": v[i].chain.raw if v[i].chain else None} for k, v in runs.items()},
                }) + "\n")
    return report


def print_grounding(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console

    from .report import rich_table

    console = console or Console()
    t = rich_table(f"grounding ({report['n']} posts with images)", "metric", "value", "target")
    targets = {"no_image_honest": "1.0", "swap_changed": ">= 0.95", "swap_jaccard": "<= 0.2", "text_cites": ">= 0.95",
               "distinct_text_lines": ">= 0.9", "comprehensiveness": ">= 2x random"}
    for k in ("no_image_honest", "swap_changed", "swap_jaccard", "swap_jaccard_raw", "label_flip_swapped",
              "label_flip_no_image", "visual_claims", "conflict_rate", "teacher_conflict_rate", "text_cites",
              "distinct_text_lines", "comprehensiveness", "comprehensiveness_random", "sufficiency",
              "sufficiency_random", "ocr_quoted"):
        v = report.get(k)
        t.add_row(k, "-" if v is None else f"{v:.3f}", targets.get(k, ""))
    for k in ("own", "swapped", "no_image"):
        t.add_row(f"parse / agree ({k})", f"{report['parse_rate'][k]:.3f} / {report['agreement'][k]:.3f}", "1.0 / 1.0")
    console.print(t)


class GroundingArgs(StrictModel):
    student: str = Field("default", description="Student spec (as load_student takes).")
    data: str = Field(description="Labelled posts (a JSONL file).")
    limit: int | None = Field(None, description="Only the first N posts with images.")
    batch_size: int = Field(16, description="Posts per predict call.")
    seed: int = Field(0, description="Seed of the image swap (a derangement of the posts).")
    out: Path | None = Field(None, description="Write grounding.json and grounding_chains.jsonl here.")


_ARGS = Options(GroundingArgs)


@click.command(help="Grounding metrics of a student's chains (own / swapped / no image); the same code as "
                    "`mulcot distill evaluate --grounding`.")
@_ARGS
def main(**kw) -> None:
    import os

    import torch

    from .data import load_examples

    a = _ARGS.build(kw)
    torch.set_num_threads(int(os.environ.get("MULCOT_THREADS", "2")))
    ex = [e for e in load_examples(a.data) if e.image_path is not None]
    if a.limit:
        ex = ex[: a.limit]
    print_grounding(evaluate_grounding(a.student, ex, batch_size=a.batch_size, seed=a.seed, out_dir=a.out))


if __name__ == "__main__":
    main()
