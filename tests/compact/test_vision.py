"""The image encoder: BatchNorm folding keeps the pretrained features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.backends.compact.vision import EfficientNetLite0, ImageEncoder, pretrained_net


def test_folded_batchnorm_gives_the_same_features_and_logits():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(90, 120), (160, 160),
                                                                                          (300, 40)]]
    enc = ImageEncoder(size=160)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.net.modules())
    x = enc.preprocess(images)
    with torch.inference_mode():
        feats, logits = pretrained_net()(x)
    got_feats, got_logits = enc.encode(images)
    torch.testing.assert_close(got_feats, feats, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)
    assert ImageEncoder.top_names(got_logits) == ImageEncoder.top_names(logits)


def test_folding_refuses_a_net_in_training_mode():
    with pytest.raises(RuntimeError, match="eval"):
        EfficientNetLite0().train().fold_batchnorm()
