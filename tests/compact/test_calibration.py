"""Logit-offset calibration of the compact classifier (``training.compact.calibrate.calibrate_bias``)."""

from __future__ import annotations

import numpy as np

from training.compact.calibrate import calibrate_bias


def test_offsets_recover_a_shifted_classifier():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), y] += 2.0  # a good classifier ...
    shifted = logits.copy()
    shifted[:, 2] -= 1.5  # ... whose negative class was pushed down (as class imbalance does)
    bias, score = calibrate_bias(shifted, y, "macro")
    assert bias[1] == 0.0
    assert 1.0 <= bias[2] - bias[0] <= 2.0  # negative pulled back up against positive
    before = (shifted.argmax(1) == y).mean()
    after = ((shifted + np.asarray(bias)).argmax(1) == y).mean()
    assert after > before


def test_no_gain_keeps_zero_offsets():
    y = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[y] * 5.0  # already perfect
    bias, score = calibrate_bias(logits, y, "weighted")
    assert bias == (0.0, 0.0, 0.0)
    assert score == 2.0


def test_average_of_trained_states():
    import pytest
    import torch

    from training.compact.calibrate import average_states

    a = {"lora.x": torch.tensor([1.0, 2.0]), "head.w": torch.tensor([[0.0]], dtype=torch.float16)}
    b = {"lora.x": torch.tensor([3.0, 6.0]), "head.w": torch.tensor([[2.0]], dtype=torch.float16)}
    avg = average_states([a, b])
    assert torch.equal(avg["lora.x"], torch.tensor([2.0, 4.0]))
    assert avg["head.w"].dtype == torch.float32 and avg["head.w"].item() == 1.0
    with pytest.raises(ValueError):
        average_states([])
