"""The detector's parameters (:class:`AlertConfig`), read from :class:`stream.settings.Settings`
(``MULCOT_ALERTS_*``); docs/alerts.md says what each one means and how they were tuned."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class WindowSpec:
    """Windows of ``size_s`` seconds ending at every multiple of ``hop_s`` (epoch seconds)."""

    size_s: int
    hop_s: int


@dataclass(frozen=True)
class AlertConfig:
    windows_s: tuple[int, ...] = (600, 3600)
    hops: int = 10
    baseline_s: int = 14400
    lateness_s: int = 300
    fdr: float = 3e-4
    min_count: int = 20
    min_baseline: int = 60
    min_share_delta: float = 0.15
    min_volume_ratio: float = 3.0
    cooldown_s: int = 3600
    recent_max: int = 1000
    ttl_s: int = 30 * 86400
    specs: tuple[WindowSpec, ...] = field(init=False)
    slot_s: int = field(init=False)

    def __post_init__(self) -> None:
        if self.hops < 1 or any(w % self.hops for w in self.windows_s):
            raise ValueError("every window must be a whole number of seconds times hops")
        specs = tuple(WindowSpec(w, w // self.hops) for w in sorted(set(self.windows_s)))
        if not specs or any(s.size_s <= 0 or s.size_s % 60 for s in specs):
            raise ValueError("alert windows must be positive multiples of 60 seconds")
        slot = math.gcd(*(s.hop_s for s in specs))
        if self.baseline_s <= 0 or self.baseline_s % slot:
            raise ValueError(f"the baseline must be a positive multiple of {slot} s")
        object.__setattr__(self, "specs", specs)
        object.__setattr__(self, "slot_s", slot)

    @property
    def slot_ms(self) -> int:
        return self.slot_s * 1000

    @property
    def horizon_s(self) -> int:
        """How far back (event time) from the frozen frontier slots are still needed: the longest
        window plus its baseline, plus one slot."""
        return max(s.size_s for s in self.specs) + self.baseline_s + self.slot_s

    def with_(self, **changes: Any) -> AlertConfig:
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, s: Any) -> AlertConfig:
        return cls(
            windows_s=tuple(s.alerts_windows_s),
            hops=s.alerts_hops,
            baseline_s=s.alerts_baseline_s,
            lateness_s=s.alerts_lateness_s,
            fdr=s.alerts_fdr,
            min_count=s.alerts_min_count,
            min_baseline=s.alerts_min_baseline,
            min_share_delta=s.alerts_min_share_delta,
            min_volume_ratio=s.alerts_min_volume_ratio,
            cooldown_s=s.alerts_cooldown_s,
            recent_max=s.alerts_recent_max,
            ttl_s=s.alerts_ttl_s,
        )


__all__ = ["AlertConfig", "WindowSpec"]
