"""training.losses: the distillation loss is CE + KL on answer positions only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from training.losses import (
    distill_loss_terms,
    kl_on_label_space,
    label_word_logits,
)


def _batch(seed=0, B=3, L=7, V=11):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, V, generator=g)
    t = torch.randn(B, L, V, generator=g)
    y = torch.randint(0, V, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, 3:6] = True  # answer tokens of row 0
    mask[1, 2:4] = True
    mask[2, 5:] = True
    return s, t, y, mask


def test_masked_positions_do_not_affect_loss_or_gradient():
    """The paper's code takes the KL over prompt and padding; ours must ignore them entirely."""
    s, t, y, mask = _batch()
    base = distill_loss_terms(s, t, y, mask, lam=0.3, T=2.0).loss

    # Garbage (huge values, inf, NaN) everywhere outside the mask, in student, teacher and labels.
    s2, t2, y2 = s.clone(), t.clone(), y.clone()
    off = ~mask
    s2[off] = torch.randn_like(s2[off]) * 1e4
    t2[off] = float("nan")
    t2[0, 0, 0] = float("inf")
    y2[off] = 0
    changed = distill_loss_terms(s2, t2, y2, mask, lam=0.3, T=2.0).loss
    assert torch.isfinite(changed)
    assert torch.allclose(base, changed, atol=0, rtol=0)

    # Gradient flows only into answer positions.
    s3 = s.clone().requires_grad_(True)
    distill_loss_terms(s3, t, y, mask, lam=0.3, T=2.0).loss.backward()
    assert s3.grad[off].abs().max().item() == 0.0
    assert s3.grad[mask].abs().sum().item() > 0.0

    # Whereas an unmasked KL (the defect) does depend on those positions.
    unmasked = distill_loss_terms(s2, t.clone(), y, None, lam=0.3, T=2.0).loss
    assert not torch.allclose(base, unmasked)


def test_ignore_index_labels_act_as_a_mask():
    s, t, y, mask = _batch(1)
    y_ign = y.clone()
    y_ign[~mask] = -100
    assert torch.allclose(distill_loss_terms(s, t, y_ign, None).loss, distill_loss_terms(s, t, y, mask).loss)


def test_lam_zero_is_cross_entropy_and_lam_one_is_scaled_kl():
    s, t, y, mask = _batch(2)
    y_ign = y.clone()
    y_ign[~mask] = -100
    ce_ref = F.cross_entropy(s.reshape(-1, s.shape[-1]), y_ign.reshape(-1), ignore_index=-100)
    assert torch.allclose(distill_loss_terms(s, t, y, mask, lam=0.0).loss, ce_ref, atol=1e-6)

    T = 3.0
    kl_ref = 0.0
    n = 0
    for b, l in mask.nonzero().tolist():
        p = F.softmax(t[b, l] / T, -1)
        q = F.softmax(s[b, l] / T, -1)
        kl_ref += float((p * (p.log() - q.log())).sum())
        n += 1
    kl_ref = kl_ref / n * T * T
    assert distill_loss_terms(s, t, y, mask, lam=1.0, T=T).loss.item() == pytest.approx(kl_ref, rel=1e-5)

    terms = distill_loss_terms(s, t, y, mask, lam=0.3, T=T)
    assert terms.n == int(mask.sum())
    assert terms.loss.item() == pytest.approx(0.7 * terms.ce.item() + 0.3 * terms.kl.item(), rel=1e-6)


def test_kl_is_zero_when_teacher_equals_student_and_teacher_gets_no_grad():
    s, _, y, mask = _batch(3)
    t = s.clone().requires_grad_(True)
    terms = distill_loss_terms(s, t, y, mask, lam=0.5)
    assert terms.kl.item() == pytest.approx(0.0, abs=1e-6)
    terms.loss.backward() if terms.loss.requires_grad else None
    assert t.grad is None  # teacher is detached


def test_shift_matches_manual_alignment_and_vocab_padding():
    s, t, y, mask = _batch(4, V=13)
    manual = distill_loss_terms(s[:, :-1], t[:, :-1], y[:, 1:], mask[:, 1:]).loss
    assert torch.allclose(distill_loss_terms(s, t, y, mask, shift=True).loss, manual)
    # Teacher with a larger padded vocabulary (same tokenizer): the extra rows are dropped.
    t_big = torch.cat([t, torch.full((*t.shape[:-1], 5), -1e9)], -1)
    assert torch.allclose(distill_loss_terms(s, t_big, y, mask).loss, distill_loss_terms(s, t, y, mask).loss, atol=1e-5)


def test_empty_mask_gives_zero_with_graph():
    s, t, y, _ = _batch(5)
    s.requires_grad_(True)
    loss = distill_loss_terms(s, t, y, torch.zeros_like(y, dtype=torch.bool)).loss
    assert loss.item() == 0.0
    loss.backward()


def test_bad_arguments_raise():
    s, t, y, mask = _batch(6)
    with pytest.raises(ValueError):
        distill_loss_terms(s, t, y, mask, lam=1.5)
    with pytest.raises(ValueError):
        distill_loss_terms(s, t, y, mask, T=0)
    with pytest.raises(ValueError):
        distill_loss_terms(s, t[:, :-1], y, mask)


def test_kl_on_label_space():
    g = torch.Generator().manual_seed(7)
    s = torch.randn(5, 3, generator=g, requires_grad=True)
    t = torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, -100, 1])
    loss = kl_on_label_space(s, t, y, lam=0.3, T=2.0)
    keep = y != -100
    ce = F.cross_entropy(s[keep], y[keep])
    kl = F.kl_div(F.log_softmax(s[keep] / 2, -1), F.log_softmax(t[keep] / 2, -1), log_target=True,
                  reduction="batchmean") * 4
    assert loss.item() == pytest.approx((0.7 * ce + 0.3 * kl).item(), rel=1e-5)
    loss.backward()
    assert s.grad[3].abs().max().item() == 0.0  # the ignored row gets no gradient
    # Row mask drops rows too.
    m = torch.tensor([True, True, False, True, True])
    t2 = t.clone()
    t2[2] = float("nan")
    assert math.isfinite(kl_on_label_space(s, t2, y, mask=m).item())
    with pytest.raises(ValueError):
        kl_on_label_space(s, t[:, :2], y)


def test_label_word_logits_gathers_columns():
    lm = torch.arange(20.0).reshape(2, 10)
    out = label_word_logits(lm, [7, 2, 5])
    assert out.tolist() == [[7.0, 2.0, 5.0], [17.0, 12.0, 15.0]]


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3), L=st.integers(2, 6), V=st.integers(2, 9), seed=st.integers(0, 10_000),
    lam=st.floats(0, 1), T=st.floats(0.5, 4.0),
)
def test_property_only_masked_in_positions_matter(B, L, V, seed, lam, T):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, V, generator=g)
    t = torch.randn(B, L, V, generator=g)
    y = torch.randint(0, V, (B, L), generator=g)
    mask = torch.rand(B, L, generator=g) > 0.5
    base = distill_loss_terms(s, t, y, mask, lam, T)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 100
    t2[~mask] = float("nan")
    other = distill_loss_terms(s2, t2, y, mask, lam, T)
    assert base.n == other.n == int(mask.sum())
    assert torch.equal(base.loss, other.loss)
    assert base.kl.item() >= -1e-6  # KL is never negative
