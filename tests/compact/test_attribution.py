"""The Text line's evidence (``model.backends.compact.attribution``): which words of the post moved the
served classifier, computed with Captum's feature ablation through the route that served it, and
the sentence that cites them. The last tests run the committed default student: no stubs."""

from __future__ import annotations

import pytest
import torch

from model import PostInput, load_student
from model.backends.compact.attribution import (
    TextEvidence,
    attribute,
    cite,
    evidence_words,
    only,
    select_quotes,
    text_sentence,
    without,
)
from training.grounding import cites_text, quoted_spans


def test_handles_retweets_links_and_the_aspect_are_not_evidence():
    text = "RT @ann_b: So ecstatic to hold the first print copy of my book! https://t.co/x #bookday"
    words = [w.text for w in evidence_words(text, None)]
    assert words[:2] == ["ecstatic", "hold"] and "RT" not in words and "@ann_b:" not in words
    assert "So" not in words and "the" not in words and "first" in words  # function words are not weighed
    assert not any(w.startswith("http") for w in words) and "#bookday" in words and "book" in words
    assert "Japan" not in [w.text for w in evidence_words("Japan beats Spain 3-0 !", "Japan")]
    ws = evidence_words(text, None)
    assert all(text[w.start:w.end] == w.text for w in ws)  # spans point into the text as it stands
    cut = without(text, ws, [w.text == "ecstatic" for w in ws])
    assert "ecstatic" not in cut and "So to hold" in cut
    assert only(text, ws, [w.text in ("ecstatic", "book") for w in ws]) == "ecstatic book"


def _toy(weights: dict[str, float]):
    """A probs_fn whose positive score is the sum of its words' weights (a linear toy classifier)."""
    def fn(rows, texts):
        out = []
        for t in texts:
            s = sum(weights.get(w.strip(".,!").lower(), 0.0) for w in t.split())
            pos = min(max(0.2 + s, 0.0), 1.0)
            out.append([pos, (1 - pos) / 2, (1 - pos) / 2])
        return torch.tensor(out)
    return fn


def test_feature_ablation_recovers_each_words_weight_and_the_sentence_cites_them():
    text = "Can't stop listening to this album, every track is a gem."
    fn = _toy({"can't": 0.1, "stop": 0.2, "gem": 0.3})
    [ev] = cite(attribute([text], [None], [0], fn), fn)
    got = {w.text: round(s, 6) for w, s in zip(ev.words, ev.scores)}
    assert got["gem"] == pytest.approx(0.3) and got["stop"] == pytest.approx(0.2) and got["track"] == 0.0
    assert ev.quotes == ["gem", "Can't stop"]  # strongest first; touching words joined, as they stand
    assert ev.without_cited == pytest.approx(0.2) and ev.base == pytest.approx(0.8)
    line = text_sentence(ev, "positive")
    assert line == ("In the text, 'gem' and 'Can't stop' read positive: without them the positive probability "
                    "falls from 0.80 to 0.20.")
    assert quoted_spans(line) == ["gem", "Can't stop"] and cites_text(line, text, None)


def test_a_text_without_weight_says_so_and_still_names_its_strongest_word():
    text = "The museum is located next to the river on Park Avenue."
    fn = _toy({"river": 0.02})
    [ev] = cite(attribute([text], ["museum"], [0], fn), fn)
    line = text_sentence(ev, "neutral")
    assert line.startswith("The text itself carries little sentiment") and "'river', by 0.02" in line
    assert cites_text(line, text, "museum")
    # a function word that moves the label more is never quoted, and the claim stays true as measured
    fn = _toy({"river": 0.02, "the": 0.17})
    [ev] = cite(attribute([text], ["museum"], [0], fn), fn)
    line = text_sentence(ev, "neutral")
    assert "'river', by 0.02" in line and "'the'" not in line
    fn = _toy({"river": 0.001})  # the weight is named as measured, never "by 0.00"
    [ev] = cite(attribute([text], ["museum"], [0], fn), fn)
    assert "'river', by under 0.01" in text_sentence(ev, "neutral")
    fn = _toy({})  # no word raises it: the line says so
    [ev] = cite(attribute([text], ["museum"], [0], fn), fn)
    assert text_sentence(ev, "neutral").endswith("no word of it raises the neutral probability at all.")
    assert text_sentence(TextEvidence("@bob https://t.co/x", [], [], 0, 0.5), "neutral").startswith("The text has no words")
    assert text_sentence(TextEvidence("", [], [], 0, 0.5), "neutral") == "There is no text with this post."


def test_a_word_that_pulls_against_the_label_is_named():
    text = "Great phone but the battery died"
    fn = _toy({"great": 0.5, "died": -0.3})
    [ev] = cite(attribute([text], [None], [0], fn), fn)
    assert ev.quotes == ["Great"] and ev.words[ev.against].text == "died"
    assert text_sentence(ev, "positive").endswith("; 'died' pulls the other way.")


def test_select_quotes_skips_stopwords_as_seeds_and_keeps_negations():
    text = "this is not good at all"
    ws = evidence_words(text, None)
    assert [w.text for w in ws] == ["not", "good"]  # function words are not weighed; negations are
    phrases, _ = select_quotes(text, ws, [0.3, 0.3])
    assert [text[ws[a].start:ws[b].end] for a, b in phrases] == ["not good"]


@pytest.fixture(scope="module")
def student():
    return load_student("default")


POSTS = [
    PostInput("Third day of rain. My weekend plans are ruined again.", id="a"),
    PostInput("Customer support kept me on hold for two hours and then hung up.", aspect="Customer support", id="b"),
    PostInput("RT @someone: So ecstatic to hold the first print copy of my book!", id="c"),
    PostInput("Meeting moved to Thursday at 3 pm in room 204.", id="d"),
]


def test_default_students_text_lines_cite_the_words_that_moved_its_label(student):
    """The Text lines the default student writes into its chains (``_text_lines``, which ``explain``
    uses; the chain writer is not needed for them: tests/compact/test_default_student.py runs whole
    chains)."""
    preds = student.classify(POSTS)
    lines, evs = student._text_lines(POSTS, preds)
    for post, p, line, ev in zip(POSTS, preds, lines, evs):
        assert cites_text(line, post.text, post.aspect), line
        assert "@someone" not in line and "'RT'" not in line
        d = ev.to_dict()
        assert d["p_label"] == pytest.approx(p.probabilities[p.label.value], abs=0.02)
        for q in d["quotes"]:
            assert q in post.text and f"'{q}'" in line
        if d["quotes"]:  # the sentence's figures are the classifier's own
            assert f"from {d['p_label']:.2f} to {d['p_without_cited']:.2f}" in line
            assert d["p_without_cited"] < d["p_label"]
    assert len(set(lines)) == len(lines)


def test_cited_words_move_the_label_more_than_random_words(student):
    from training.grounding import faithfulness

    posts = POSTS[:3]
    preds = student.classify(posts)
    f = faithfulness(student, posts, preds, seed=0)
    assert f["faithfulness_n"] >= 2
    assert f["comprehensiveness"] > 2 * max(f["comprehensiveness_random"], 0.0)


def test_an_attribution_failure_never_fails_a_post(student, monkeypatch, caplog):
    from model.backends.compact.student import ATTRIBUTION_FAILED

    def broken(*_a, **_k):
        raise RuntimeError("attribution broke")

    monkeypatch.setattr(student, "text_evidence", broken)
    preds = student.classify(POSTS[:2])
    lines, evs = student._text_lines(POSTS[:2], preds)
    assert lines == [ATTRIBUTION_FAILED] * 2 and evs == [None, None]
    assert "attribution failed" in caplog.text
