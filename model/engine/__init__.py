"""A batched generation engine for the HF student (Qwen2/2.5-VL, Idefics3): static slotted KV
cache, CUDA-graph decode step, continuous refill, one vision pass per post. See docs/engine.md.

Rooms, along vLLM v1's lines: :mod:`.request` (a request per post, its status), :mod:`.scheduler`
(pure admit / finish decisions), :mod:`.runner` (prefill, decode, CUDA graphs over
:mod:`.decoder`'s ``SlotDecoder``), :mod:`.engine` (the caller API and the core loop), and
:mod:`.path` (the HF student's fast path). Inputs: :mod:`.inputs`, :mod:`.vision`; the checks
and benchmarks: :mod:`.checks`."""

from .config import DoesNotFit, EngineConfig
from .engine import Engine
from .request import EngineResult

__all__ = ["Engine", "EngineConfig", "EngineResult", "DoesNotFit"]
