"""A mean route (``student.json``: a list of classifiers for one route): the compact backend
averages the members' probabilities for posts with an image, and serves posts without one (and
the Conflict line's text-only reading) from the frozen member's text-only twin alone. Built from
the committed default weights: two real classifiers, no stubs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from model import PostInput, load_student
from model.loading import DEFAULT_WEIGHTS


def _student_dir(tmp_path, post):
    d = tmp_path / ("mean" if isinstance(post, list) else post)
    shutil.copytree(DEFAULT_WEIGHTS, d)
    meta = json.loads((d / "student.json").read_text())
    meta["classifiers"] = {"post": post}
    (d / "student.json").write_text(json.dumps(meta))
    return d


def _probs(student, posts):
    return torch.tensor([[p.probabilities[k] for k in ("positive", "neutral", "negative")]
                         for p in student.predict(posts, chain=False)])


def test_mean_route_averages_with_an_image_and_uses_the_twin_without(tmp_path):
    frozen = json.loads((DEFAULT_WEIGHTS / "student.json").read_text())["classifiers"]["post"]
    frozen = frozen[0] if isinstance(frozen, list) else frozen
    fine = "classifier_aspect"  # a fine-tuned classifier of the same weights, standing in as the second member
    kw = {"label_dtype": "fp32"}
    one = load_student(f"compact:{_student_dir(tmp_path, frozen)}", **kw)
    two = load_student(f"compact:{_student_dir(tmp_path, fine)}", **kw)
    mean = load_student(f"compact:{_student_dir(tmp_path, [frozen, fine])}", **kw)
    img = Image.new("RGB", (96, 72), "orange")
    with_img = [PostInput("Lovely sunset over the harbour tonight", image=img, id="a"),
                PostInput("Traffic is terrible again this morning", image=img, id="b")]
    no_img = [PostInput("Lovely sunset over the harbour tonight", id="c")]
    expect = (_probs(one, with_img) + _probs(two, with_img)) / 2
    assert torch.allclose(_probs(mean, with_img), expect, atol=1e-5)
    assert torch.allclose(_probs(mean, no_img), _probs(one, no_img), atol=1e-6)
    assert torch.allclose(mean.text_only_probs(with_img), one.text_only_probs(with_img), atol=1e-6)


def test_a_mean_route_needs_a_frozen_member(tmp_path):
    with pytest.raises(ValueError, match="frozen-feature"):
        load_student(f"compact:{_student_dir(tmp_path, ['classifier_aspect', 'classifier_aspect'])}")
