"""The grounding metrics (training/grounding.py) on hand-written chains."""

from __future__ import annotations

from model import Prediction, parse_chain
from model.types import Label
from training.grounding import content_words, derangement, grounding_metrics, jaccard, names_conflict, states_no_image


def _pred(label: str, image: str, conflict: str) -> Prediction:
    chain = parse_chain(f"Text: t.\nImage: {image}\nConflict: {conflict}\nConclusion: c.\nPrediction: {label}")
    probs = {l: (0.8 if l == label else 0.1) for l in ("positive", "neutral", "negative")}
    return Prediction(label=Label(label), probabilities=probs, chain=chain)


def test_content_words_drop_stopwords_and_image_vocabulary():
    assert content_words("The image shows a cake (0.41) on a plate.") == {"cake", "plate"}
    assert content_words("The image shows a cake.", generic=False) == {"image", "shows", "cake"}
    assert jaccard({"cake"}, {"cake", "plate"}) == 0.5


def test_conflict_and_no_image_readings():
    assert names_conflict("There is a slight conflict between the text and the image.")
    assert not names_conflict("There is no direct conflict between the text and the image.")
    assert not names_conflict("There are no conflicts: both are positive.")
    assert not names_conflict("The text and the image agree.")
    assert states_no_image("There is no image with this post.")
    assert not states_no_image("The image shows a dog.")


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 10):
        p = derangement(n, seed=3)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    assert derangement(10, 1) == derangement(10, 1)


def test_metrics_from_three_runs():
    own = [_pred("positive", "A cake (0.41) and a plate.", "No conflict: both positive."),
           _pred("negative", "A dog (0.30).", "Conflict between text and image: the image moved it.")]
    swapped = [_pred("positive", "A dog (0.30).", "No conflict."), _pred("negative", "A dog (0.30).", "No conflict.")]
    none = [_pred("positive", "There is no image.", "x"), _pred("neutral", "The image shows a dog.", "x")]
    r = grounding_metrics(own, swapped, none)
    assert r["no_image_honest"] == 0.5
    assert r["swap_changed"] == 0.5 and r["swap_jaccard"] == 0.5  # {cake, plate} vs {dog}: 0; {dog} vs {dog}: 1
    assert r["label_flip_swapped"] == 0.0 and r["label_flip_no_image"] == 0.5
    assert r["conflict_rate"] == 0.5
    assert r["visual_claims"] == 0.0  # the hand-written Text / Conclusion lines "t." and "c." claim nothing
    chain = parse_chain("Text: t.\nImage: A cake (0.41).\nConflict: No conflict.\n"
                        "Conclusion: The smiling people make it positive.\nPrediction: positive")
    smiling = [Prediction(label=Label("positive"), probabilities=own[0].probabilities, chain=chain)]
    assert grounding_metrics(smiling, smiling, smiling)["visual_claims"] == 1.0
    assert r["parse_rate"]["own"] == 1.0 and r["agreement"]["no_image"] == 1.0


def test_evidence_sentences_say_only_what_the_evidence_says():
    from PIL import Image

    from model.backends.compact.grounded import (
        CONFLICT_MARK,
        NO_IMAGE,
        ImageEvidence,
        conflict_sentence,
        dominant_colours,
        image_sentence,
    )

    red = Image.new("RGB", (40, 30), (220, 20, 20))
    assert dominant_colours(red) == (("red", 1.0),)
    ev = ImageEvidence((("cake", 0.41), ("plate", 0.12), ("bakery", 0.05)), dominant_colours(red))
    line = image_sentence(ev)  # by default no class is named (docs/model.md, "What the Image line says")
    assert "cake" not in line and "could not be recognised" in line and "red (100%)" in line
    assert content_words(line) == {"content", "recognised", "red"}
    named = image_sentence(ev, class_min=0.4)
    assert "cake (0.41)" in named and "plate" not in named
    read = image_sentence(ImageEvidence((("website", 0.9),), (), "worst day ever :(", 0.97, "read"))
    assert read.startswith('The picture\'s text reads "worst day ever :("') and "website" not in read
    failed = image_sentence(ImageEvidence((), (), None, None, "failed"))
    assert "could not be read (OCR failed)" in failed
    assert image_sentence(None) == NO_IMAGE and states_no_image(NO_IMAGE)
    probs = {"positive": 0.6, "neutral": 0.3, "negative": 0.1}
    text = {"positive": 0.2, "neutral": 0.7, "negative": 0.1}
    moved = conflict_sentence("positive", probs, "neutral", text)
    assert moved.startswith(CONFLICT_MARK) and names_conflict(moved) and "from neutral to positive" in moved
    same = conflict_sentence("positive", probs, "positive", probs)
    assert not names_conflict(same)
    assert not names_conflict(conflict_sentence("positive", None, None, None))


def test_swap_partners_never_give_a_post_its_own_image_file():
    from training.grounding import swap_partners

    images = ["a", "a", "b", "c", "c", "c", "d"]
    for seed in range(20):
        perm = swap_partners(images, seed)
        assert sorted(perm) == list(range(len(images)))
        assert all(images[perm[i]] != images[i] for i in range(len(images)))


def test_pixel_claims_and_image_mentions():
    from training.grounding import claims_pixels

    assert claims_pixels("The image shows smiling fans.")
    assert not claims_pixels("The text praises the team.")
    assert not claims_pixels("With the text and the image evidence agreeing, it is positive.")
    assert claims_pixels("The image adds nothing.", mentions=True)
