"""The committed default student (``load_student("default")``) on a few hand-made posts.

These run the real pretrained encoders and the real trained adapters: no stubs.
"""

from __future__ import annotations

import math

import pytest
from PIL import Image, ImageDraw

from model import LABELS, Label, PostInput, load_student
from model.loading import DEFAULT_WEIGHTS


@pytest.fixture(scope="module")
def student():
    if not (DEFAULT_WEIGHTS / "student.json").exists():
        pytest.fail(f"the default student's weights are missing from {DEFAULT_WEIGHTS}")
    return load_student("default")


def _picture(color: str, size=(120, 90), mode="RGB") -> Image.Image:
    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).ellipse((size[0] // 8, size[1] // 8, size[0] - 1 - size[0] // 8, size[1] - 1 - size[1] // 8), fill="white")
    return im.convert(mode).convert("RGB")


POSTS = [
    PostInput("What a wonderful day at the beach with my family !", image=_picture("skyblue"), id="p1"),
    PostInput("Worst customer service ever , never flying with them again", image=_picture("gray"), aspect="them", id="p2"),
    PostInput("The council meets on Tuesday to discuss the new budget", aspect="council", id="p3"),
    PostInput("Congratulations to Serena Williams on another title !", image=_picture("green", (7, 300)), aspect="Serena Williams", id="p4"),
]


def test_labels_only(student):
    preds = student.predict(POSTS, chain=False)
    assert len(preds) == len(POSTS)
    for p in preds:
        assert p.label in LABELS
        assert p.chain is None
        assert math.isclose(sum(p.probabilities.values()), 1.0, rel_tol=1e-5)
        assert p.probabilities[p.label.value] == max(p.probabilities.values())
    # The trained classifier reads the obvious cases right.
    assert preds[0].label is Label.POSITIVE
    assert preds[1].label is Label.NEGATIVE


@pytest.fixture(scope="module")
def chained(student):
    return student.predict(POSTS)


def test_chain_text_lines_quote_the_post(chained):
    """The Text line of every chain quotes words of its post (the aspect excluded) and records the
    evidence it was written from."""
    from training.grounding import cites_text

    for post, p in zip(POSTS, chained):
        assert cites_text(p.chain.text_analysis, post.text, post.aspect), p.chain.text_analysis
        assert set(p.extra["text_evidence"]) >= {"quotes", "p_label", "p_without_cited"}


def test_label_and_chain_agree_and_parse(chained):
    preds = chained
    for p in preds:
        assert p.chain is not None
        assert p.chain.parsed, p.chain.raw
        assert p.chain.prediction == p.label.value
        # by default the Conclusion is written from the evidence: the label with its probability
        # and the words the Text line cites, nothing generated
        assert p.generated_tokens == 0
        assert f"is {p.label.value} ({p.probabilities[p.label.value]:.2f})" in p.chain.final_conclusion
        for q in p.extra["text_evidence"]["quotes"]:
            assert f"'{q}'" in p.chain.text_analysis
        assert len(p.chain.text_analysis.split()) >= 3


def test_the_chain_writer_still_writes_the_conclusion_on_request(student):
    """``conclusion="writer"``: the distilled chain writer writes the Conclusion after the forced start."""
    student.conclusion = "writer"
    try:
        preds = student.predict(POSTS[:2])
    finally:
        student.conclusion = "evidence"
    for p in preds:
        assert p.chain.parsed and p.chain.prediction == p.label.value
        assert p.generated_tokens >= 3 and len(p.chain.final_conclusion.split()) >= 3


def test_classify_is_deterministic_and_batch_independent(student):
    a = student.classify(POSTS)
    b = student.classify(POSTS[2:3])
    assert [p.label for p in a] == [p.label for p in student.classify(POSTS)]
    assert a[2].label == b[0].label
    # the label pass runs in bf16 on bf16-capable CPUs: padding changes the last digits only
    assert math.isclose(a[2].confidence, b[0].confidence, abs_tol=1e-2)


def test_empty_batch(student):
    assert student.predict([]) == []


def test_chain_image_fields_come_from_the_evidence(student, chained):
    """No image: the Image line says so. With one: it names the image classifier's guesses with
    their scores (the evidence recorded in ``extra``), and the Conflict line compares the
    text-only and multimodal labels."""
    from model.backends.compact.grounded import AGREE_MARK, CONFLICT_MARK, NO_IMAGE, NO_IMAGE_CONFLICT

    preds = chained
    for post, p in zip(POSTS, preds):
        if post.image is None:
            assert p.chain.image_analysis == NO_IMAGE
            assert p.chain.conflict_resolution == NO_IMAGE_CONFLICT
            assert p.extra["image_evidence"] is None
            continue
        ev = p.extra["image_evidence"]
        assert [n for n, _ in ev["classes"]] == [n for n, _ in p.extra["image_classes"]]
        assert len(ev["classes"]) == 3
        # ImageNet classes are not named by default (right for 12 of 80 tweet pictures); the line
        # says the content was not recognised and gives the colours it measured
        for name, _ in p.extra["image_classes"]:
            assert name not in p.chain.image_analysis
        assert "could not be recognised" in p.chain.image_analysis
        assert all(f"{c} ({round(100 * s)}%)" in p.chain.image_analysis for c, s in ev["colours"])
        assert p.chain.conflict_resolution.startswith((AGREE_MARK, CONFLICT_MARK))
        assert p.chain.parsed and p.chain.prediction == p.label.value
    # the Conclusion starts from the Conflict line (a writer trained on grounded targets) or, with
    # no image, from the text alone; a post without an aspect is "the post", not the prompt's
    # stand-in target "the whole post"
    from model.backends.compact.grounded import AGREE_START, CONFLICT_START, NO_IMAGE_START

    for post, p in zip(POSTS, preds):
        start = NO_IMAGE_START if post.image is None else (
            CONFLICT_START if p.chain.conflict_resolution.startswith(CONFLICT_MARK) else AGREE_START)
        assert p.chain.final_conclusion.startswith(start), p.chain.raw
        if post.aspect is None:
            assert "whole post" not in p.chain.raw and "target aspect" not in p.chain.raw, p.chain.raw
    # another image gives other evidence (the Image line is written from it alone)
    swapped = student.classify([PostInput(POSTS[0].text, image=POSTS[3].image, id="s")])[0]
    assert swapped.extra["image_classes"] != preds[0].extra["image_classes"]


def test_post_without_image_uses_the_text_route(student):
    """The post route's heads were fitted on posts that all had an image; a post-level post without
    one is served by the round-4 text route (docs/results.md), and the Conflict line's text-only
    reading of posts with an image is still the frozen route's text-only twin."""
    import numpy as np

    assert student.text_route is not None and student.text_route.parts == ("text", "vader")
    post = PostInput(id="t", text="Can't stop listening to this album, every track is a gem.")
    [pred] = student.classify([post])
    [route] = student.text_route.probs([post.text]).tolist()
    assert [pred.probabilities[label] for label in LABELS] == pytest.approx(route, abs=1e-5)
    [twin] = student.text_only_probs([post]).tolist()
    assert not np.allclose(twin, route, atol=1e-3)  # the twin still reads the text for the Conflict line
    aspect = PostInput(id="a", text=post.text, aspect="album")  # aspect posts keep their own route
    assert student.classify([aspect])[0].probabilities != pred.probabilities
