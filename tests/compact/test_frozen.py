"""The frozen-feature route classifier: saved heads give scikit-learn's probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from model.backends.compact.frozen import FrozenClassifier, design, save_frozen


def test_saved_head_matches_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    n = 90
    F = {"text": rng.normal(size=(n, 8)).astype(np.float32), "image": rng.normal(size=(n, 5)).astype(np.float32),
         "has_image": (rng.random(n) > 0.3).astype(np.float32)}
    y = np.arange(n) % 3
    parts = ("text", "image")
    full = LogisticRegression(max_iter=500).fit(design(F, parts), y)
    text = LogisticRegression(max_iter=500).fit(design(F, ("text",)), y)
    save_frozen(tmp_path, "classifier_post", parts, full, text)
    clf = FrozenClassifier.load(tmp_path, "classifier_post", encoder=object())  # no text encoding needed here
    assert np.allclose(clf.probs(F), full.predict_proba(design(F, parts)), atol=1e-5)
    assert np.allclose(clf.probs(F, text_only=True), text.predict_proba(design(F, ("text",))), atol=1e-5)
    # a post without an image: its image block is zero whatever the feature holds
    G = {**F, "has_image": np.zeros(n, np.float32)}
    assert np.allclose(design(G, parts)[:, 8:], 0)
