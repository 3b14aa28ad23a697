"""Packed vision attention (model/kernels/attention.py) equals transformers' per-window loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model import PostInput, load_student
from model.kernels.attention import PACKED_SDPA, packed_sdpa_forward


@pytest.mark.parametrize("lengths", [[5], [3, 7, 1, 7], [16, 16, 16], [1, 1, 30, 2]])
def test_packed_sdpa_equals_one_call_per_segment(lengths):
    torch.manual_seed(0)
    heads, dim, total = 3, 8, sum(lengths)
    q, k, v = (torch.randn(1, heads, total, dim) for _ in range(3))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    module = torch.nn.Module().eval()
    out, _ = packed_sdpa_forward(module, q, k, v, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    parts = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
             for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    expected = torch.cat(parts, dim=2).transpose(1, 2)  # (1, total, heads, dim)
    assert out.shape == (1, total, heads, dim)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_packed_sdpa_refuses_calls_without_segments():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_sdpa_forward(torch.nn.Module(), q, q, q)


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_student_with_packed_vision_attention_scores_like_the_window_loop(tiny_qwen_dir):
    # 168 px: a 12 x 12 patch grid cut into several windows (the tiny config's windows are
    # 56 px), and aspect ratios that give images different grids in one batch
    posts = [PostInput("beach", image=_noise((300, 200), 1)), PostInput("no image"),
             PostInput("tall", image=_noise((90, 400), 2)), PostInput("square", image=_noise((64, 64), 3))]
    packed = load_student(f"hf:{tiny_qwen_dir}", image_size=168, chain=False)
    loop = load_student(f"hf:{tiny_qwen_dir}", image_size=168, chain=False, vision_attention="model")
    assert packed.info["vision_attention"] == PACKED_SDPA
    assert packed.model.config.vision_config._attn_implementation == PACKED_SDPA
    assert packed.model.config.text_config._attn_implementation == loop.model.config.text_config._attn_implementation
    assert "vision_attention" not in loop.info
    a, _ = packed.label_logits(posts)
    b, _ = loop.label_logits(posts)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_other_families_keep_their_attention(tiny_smolvlm_dir):
    student = load_student(f"hf:{tiny_smolvlm_dir}", chain=False)
    assert "vision_attention" not in student.info
