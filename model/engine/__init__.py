"""A batched generation engine for the HF student (Qwen2/2.5-VL, Idefics3): static slotted KV
cache, CUDA-graph decode step, continuous refill, one vision pass per post. See docs/engine.md."""

from .engine import STOP_STRINGS, DoesNotFit, Engine, EngineConfig, EngineResult

__all__ = ["Engine", "EngineConfig", "EngineResult", "DoesNotFit", "STOP_STRINGS"]
