"""Distillation losses of the student stage (docs/training.md, "4. Student"), reusable by any student.

For each task (chain generation, label prediction)::

    loss = (1 - lam) * CE(student, gold) + lam * T**2 * KL(softmax(teacher / T) || softmax(student / T))

Both terms are averaged over *answer positions only*: prompt tokens, image tokens and padding
are dropped before anything is computed (selected by boolean indexing, so masked positions
cannot leak into the value or the gradient, even when they hold inf/NaN). The MulCoT-RD
reference code takes the KL over every position; that is the defect avoided here.

Two entry points:

* :func:`distill_loss_terms` - token-level, for causal LMs that share a tokenizer with the teacher
  (``[B, L, V]`` logits);
* :func:`kl_on_label_space` - for classifier-style students (``[B, C]`` logits over the
  ``model.LABELS`` order), with the teacher's logits projected to the same label space
  (see :func:`label_word_logits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class LossTerms(NamedTuple):
    """The combined loss and its two parts (``ce`` and ``kl`` are detached-free tensors)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    n: int  # number of positions that counted


def shift_for_causal_lm(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Align causal-LM outputs with their targets: ``logits[:, t]`` predicts ``labels[:, t+1]``.

    Returns ``(logits[:, :-1], labels[:, 1:], mask[:, 1:])``.
    """
    return logits[:, :-1], labels[:, 1:], (mask[:, 1:] if mask is not None else None)


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """Per-row KL(teacher || student) at temperature T, times T**2. Rows are ``[N, V]``."""
    s_logp = F.log_softmax(student.float() / T, dim=-1)
    t_logp = F.log_softmax(teacher.float() / T, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return kl * (T * T)


def distill_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    lam: float = 0.3,
    T: float = 2.0,
    *,
    shift: bool = False,
) -> LossTerms:
    """Token-level ``(1 - lam) * CE + lam * T^2 * KL(teacher || student)`` on answer positions.

    Args:
        student_logits: ``[B, L, V]`` (any float dtype; computed in float32).
        teacher_logits: ``[B, L, V']`` from the frozen teacher/assistant on the *same token ids*
            (shared tokenizer); it is detached. If ``V' != V`` the common prefix is used.
        labels: ``[B, L]`` target ids, ``-100`` where no loss is wanted.
        mask: optional ``[B, L]`` bool/0-1, True on answer positions; combined (AND) with
            ``labels != -100``. Prompt, image and padding positions must be False/-100.
        lam: weight of the KL term (0 = plain CE, 1 = pure distillation). Default 0.3.
        T: softmax temperature of the KL (the KL is multiplied by ``T**2``). Default 2.0.
        shift: set True when passing raw causal-LM outputs (``logits[:, t]`` predicts
            ``labels[:, t+1]``); the function then shifts logits, labels and mask itself.

    Returns :class:`LossTerms`: ``loss`` (the scalar to minimise), ``ce`` and ``kl`` (both means
    over the kept positions, 0 when none) and ``n`` (how many positions were kept).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if shift:
        student_logits, labels, mask = shift_for_causal_lm(student_logits, labels, mask)
        teacher_logits = teacher_logits[:, :-1]
    if student_logits.shape[:-1] != labels.shape or teacher_logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"shape mismatch: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}, "
            f"labels {tuple(labels.shape)} (logits must be [..., V] over the label positions)"
        )
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vs != vt:
        # Same tokenizer, different padded embedding sizes (e.g. Qwen2.5-VL-3B vs -7B): the
        # extra rows are never-used padding ids, so compare over the common prefix.
        v = min(vs, vt)
        student_logits, teacher_logits = student_logits[..., :v], teacher_logits[..., :v]
    keep = labels != IGNORE_INDEX
    if mask is not None:
        keep = keep & mask.to(torch.bool)
    n = int(keep.sum())
    if n == 0:
        zero = student_logits.sum() * 0.0  # keeps the graph, value 0
        return LossTerms(zero, zero, zero, 0)
    s = student_logits[keep]  # [N, V] answer positions only
    t = teacher_logits[keep].detach()
    y = labels[keep]
    ce = F.cross_entropy(s.float(), y)
    kl = _kl_rows(s, t, T).mean() if lam > 0 else s.sum() * 0.0
    return LossTerms((1.0 - lam) * ce + lam * kl, ce, kl, n)


def kl_on_label_space(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.3,
    T: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same loss for classifier-style students, over the shared label space.

    Args:
        student_logits: ``[B, C]`` class logits in ``model.LABELS`` order.
        teacher_logits: ``[B, C]`` teacher logits in the same order (e.g. from
            :func:`label_word_logits` on the assistant's label-prompt output); detached.
        labels: ``[B]`` gold class indices, ``-100`` to skip a row (e.g. no gold label).
        mask: optional ``[B]`` bool, False to drop a row entirely.
    Returns ``(1 - lam) * CE + lam * T^2 * KL(teacher || student)``, each a mean over kept rows.
    """
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"expected [B, C] logits of equal shape, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    return distill_loss_terms(student_logits, teacher_logits, labels, mask, lam, T).loss


def label_word_logits(lm_logits: torch.Tensor, label_token_ids: Sequence[int]) -> torch.Tensor:
    """Project LM next-token logits ``[B, V]`` onto the label space: ``[B, C]`` logits of the
    first token of each label word (in ``model.LABELS`` order). Softmax over these three is the
    model's label distribution restricted to the label words."""
    idx = torch.as_tensor(list(label_token_ids), device=lm_logits.device, dtype=torch.long)
    return lm_logits.index_select(-1, idx)


__all__ = [
    "IGNORE_INDEX",
    "LossTerms",
    "distill_loss_terms",
    "kl_on_label_space",
    "label_word_logits",
    "shift_for_causal_lm",
]
