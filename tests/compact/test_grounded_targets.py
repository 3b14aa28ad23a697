"""The chain writer's grounded training targets (training/compact/explainer.py:grounded_rows):
the Image and Conflict lines are the student's own evidence sentences, the loss covers only the
lines the writer writes, and no target describes pixels."""

from __future__ import annotations

import pytest

from model.backends.compact.grounded import AGREE_START, CONFLICT_START, NO_IMAGE, NO_IMAGE_START, conclusion_start
from training.compact.explainer import conclusion_rest, encode_segments


def test_conclusion_rest_drops_the_teachers_image_opener():
    assert conclusion_rest("Integrating insights from both the text and the image, the overall sentiment "
                           "toward X is positive.") == "the overall sentiment toward X is positive."
    assert conclusion_rest("By integrating the insights from both text and image modalities, it is clear.") == "it is clear."
    assert conclusion_rest("The text conveys a neutral stance.") == "the text conveys a neutral stance."


def test_conclusion_start_follows_the_conflict_line():
    assert conclusion_start(False, False, False) == NO_IMAGE_START == conclusion_start(False, True, True)
    assert conclusion_start(True, True, False) == ""  # a writer trained on the teacher's lines: as before
    assert conclusion_start(True, False, True) == AGREE_START
    assert conclusion_start(True, True, True) == CONFLICT_START


def test_encode_segments_learns_only_the_marked_text():
    from transformers import AutoTokenizer

    from model.backends.compact.text import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    ids, labels = encode_segments(tok, [("prompt words Text:", False), (" good day\n", True),
                                        ("Image: a cake\nConclusion:", False), (" fine.", True)])
    assert len(ids) == len(labels)
    learned = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    assert learned == "good day fine." and "cake" not in learned


@pytest.mark.data
def test_grounded_rows_on_real_posts(data_dir, monkeypatch):
    monkeypatch.setenv("MULCOT_DATA_DIR", str(data_dir))
    from model import load_student
    from model.backends.compact.explainer import ExplainerConfig, load_base
    from training.compact.explainer import chain_examples, grounded_rows
    from training.grounding import claims_pixels

    pairs = chain_examples(["t15/dev.jsonl"], limit=16)
    _, tok = load_base()
    cfg = ExplainerConfig(grounded_targets=True)
    rows, counts = grounded_rows(pairs, cfg, tok, load_student("default"), no_image_every=2)
    assert counts["posts"] == len(pairs) and counts["kept"] > 0
    assert counts["kept"] + counts["wrong_label"] + counts["pixel_claims"] == counts["posts"]
    assert len(rows) == counts["kept"] + counts["no_image_rows"] and counts["no_image_rows"] >= 1
    starts = (AGREE_START, CONFLICT_START, NO_IMAGE_START)
    for ids, labels in rows:
        text = tok.decode(ids)
        learned = tok.decode([i for i, l in zip(ids, labels) if l != -100])
        image_line = text.split("\nImage: ", 1)[1].split("\n", 1)[0]
        assert image_line == NO_IMAGE or "the main colours are" in image_line or "could not be recognised" in image_line
        assert image_line not in learned and "Conflict:" not in learned  # evidence lines are context only
        assert any(f"Conclusion: {s}" in text for s in starts)
        assert not claims_pixels(learned, mentions=True)
        assert learned.endswith(tok.eos_token)
