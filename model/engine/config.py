"""The engine's settings (:class:`EngineConfig`), the error of a post too long for a slot, and the
shape rounding every part shares. No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class EngineConfig:
    """Engine settings.

    ``slots``: rows decoded together (the engine's batch); ``label_rows``: extra cache rows for
    labels-only posts, so they are scored while every slot holds a chain (default a quarter of
    ``slots``); ``max_new_tokens``: chain budget;
    ``max_len``: tokens one slot can hold (prompt + chain); ``sync_every``: decode steps between
    two host reads of the new tokens; ``len_bucket`` / ``kv_bucket``: shape rounding;
    ``admit_min``: free slots needed before a new group is admitted while others decode
    (default: a quarter of the slots); ``cuda_graphs``: capture the decode step on CUDA;
    ``stop_at_prediction``: stop a chain at its ``Prediction`` key; ``workers``: preprocessing
    threads (default: the CPU count, at most 8; planning one post with a 280 x 280
    image took 13 ms of one core on the loaded 2-core development machine, two thirds of it the
    image processor)."""

    slots: int = 64
    label_rows: int | None = None
    max_new_tokens: int = 384
    max_len: int = 2048
    sync_every: int = 8
    len_bucket: int = 32
    kv_bucket: int = 256
    admit_min: int | None = None
    cuda_graphs: bool = True
    stop_at_prediction: bool = True
    image_size: int | None = 280
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 2))

    @property
    def width(self) -> int:
        """Columns of the output token table: the chain budget plus the steps run between two
        host reads (a row is read up to a chunk after it stopped) plus the prefill's token."""
        return self.max_new_tokens + self.sync_every + 1

    @property
    def n_label_rows(self) -> int:
        return self.label_rows if self.label_rows is not None else max(1, self.slots // 4)


class DoesNotFit(ValueError):
    """A post's prompt and chain budget are longer than a slot (``EngineConfig.max_len``)."""


def pow2(n: int) -> int:
    """The lowest power of two >= ``n`` (1 for ``n`` <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def round_up(n: int, m: int) -> int:
    """``n`` rounded up to a multiple of ``m``."""
    return -(-int(n) // m) * m
