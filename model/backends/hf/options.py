"""The HF student's options (``load_student("hf:...", **options)``, also the ``tiny:`` kind's):
one dataclass, its defaults said once; see docs/model.md ("Options")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..options import BackendOptions


@dataclass(frozen=True)
class HFOptions(BackendOptions):
    """Options of :class:`~model.backends.hf.student.HFStudent`.

    Loading: ``device`` (default cuda if available), ``dtype`` (bf16 on GPU, fp32 on CPU),
    ``merge_adapter`` (merge a LoRA adapter into the base), ``attn_implementation`` (e.g. sdpa,
    flash_attention_2). The student: ``name``, ``version``, ``image_size`` (Qwen: square pixel
    budget, default 280), ``max_new_tokens`` (chain budget), ``do_sample`` / ``temperature`` /
    ``top_p`` / ``seed`` (greedy by default), ``chain`` (False = labels only), ``chain_prompt``
    (``reasoning`` | ``guided``), ``label_scoring`` (``auto``: first-token logits when the label
    words' first tokens differ, else full-word log-probabilities; ``first_token``; ``sequence``),
    ``vision_attention`` (``packed``: Qwen-VL vision towers run every window in one attention
    call unless flash-attn is in use; ``model``: the model's own), ``cache_implementation``
    (passed to ``generate``, e.g. ``static``), ``engine`` (``auto``: the batched engine of
    ``model/engine`` on CUDA; ``on``; ``off``), ``engine_slots``, ``engine_max_len``
    (docs/engine.md)."""

    device: str | None = None
    dtype: Any = None
    merge_adapter: bool = True
    attn_implementation: str | None = None
    name: str = "hf"
    version: str = "0"
    image_size: int | None = None
    max_new_tokens: int = 384
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    chain: bool = True
    chain_prompt: str = "reasoning"
    label_scoring: str = "auto"
    vision_attention: str = "packed"
    cache_implementation: str | None = None
    engine: Any = "auto"
    engine_slots: int | None = None
    engine_max_len: int | None = None

    def __post_init__(self) -> None:
        if self.chain_prompt not in ("reasoning", "guided"):
            raise ValueError("chain_prompt must be 'reasoning' or 'guided'")
        if self.vision_attention not in ("packed", "model"):
            raise ValueError("vision_attention must be 'packed' or 'model'")
        if self.label_scoring not in ("auto", "first_token", "sequence"):
            raise ValueError("label_scoring must be 'auto', 'first_token' or 'sequence'")

    def load_options(self) -> dict[str, Any]:
        """The options that load the weights (``load_model_and_processor``)."""
        return {"device": self.device, "dtype": self.dtype, "merge_adapter": self.merge_adapter,
                "attn_implementation": self.attn_implementation}
