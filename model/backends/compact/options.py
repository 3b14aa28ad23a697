"""The compact student's options (``load_student("default" | "compact:<dir>", **options)``): one
dataclass, its defaults said once; see docs/model.md ("Speed knobs")."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import BackendOptions


@dataclass(frozen=True)
class CompactOptions(BackendOptions):
    """Options of :class:`~model.backends.compact.student.CompactStudent`.

    ``device``; ``chain_batch_size`` (at most this many chains decode together);
    ``max_new_tokens`` (None: the explainer's own budget; each generated line is also capped);
    ``chain_dtype`` / ``label_dtype`` (``auto``: bf16 where the CPU has AVX512-BF16/AMX, else
    fp32; ``bf16``; ``fp32``); ``image_dtype`` (``fp32``: as the classifier was trained and
    calibrated; ``bf16``); ``image_size`` (None: the weights' own, 160); ``chain_decoder``
    (``greedy``: the explainer's own decoder; ``generate``: transformers' ``generate``, the
    reference); ``ocr`` (read text in the picture for the Image line); ``attribution`` (the Text
    line from the words that moved the classifier; off: the chain writer writes it);
    ``image_class_min`` (the Image line names ImageNet classes only at or above this probability;
    None: it names none); ``conclusion`` (``evidence``: the Conclusion line written from the
    evidence, ``grounded.evidence_conclusion``; ``writer``: by the chain writer, whose prompt pass
    is 3/4 of a chain's CPU time). The flags may arrive as strings (a spec, the environment)."""

    device: str = "cpu"
    chain_batch_size: int = 32
    max_new_tokens: int | None = None
    chain_dtype: str = "auto"
    label_dtype: str = "auto"
    image_dtype: str = "fp32"
    image_size: int | None = None
    chain_decoder: str = "greedy"
    ocr: bool | str = True
    attribution: bool | str = True
    image_class_min: float | str | None = None
    conclusion: str = "evidence"

    def __post_init__(self) -> None:
        if self.chain_decoder not in ("greedy", "generate"):
            raise ValueError(f"chain_decoder must be 'greedy' or 'generate', not {self.chain_decoder!r}")
        if self.conclusion not in ("evidence", "writer"):
            raise ValueError(f"conclusion must be 'evidence' or 'writer', not {self.conclusion!r}")
