"""The OpenAI-compatible student's options (``load_student("openai:...", **options)``, or after
``?`` in the spec): one dataclass, its defaults said once; see :mod:`.student`."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import BackendOptions

CONSTRAINTS = ("structured_outputs", "guided_choice", "regex", "none")
LABEL_SCORING = ("top_logprobs", "prompt_logprobs")


@dataclass(frozen=True)
class OpenAIOptions(BackendOptions):
    """Options of :class:`~model.backends.openai.student.OpenAIStudent`.

    ``api_key`` (else ``$MULCOT_OPENAI_API_KEY``, else ``$OPENAI_API_KEY``), ``name``,
    ``version``; the client (``model.http.ChatClient``): ``max_concurrency``, ``requests_per_s``,
    ``timeout_s``, ``max_retries``, ``backoff_s``, ``max_backoff_s``; labels: ``top_logprobs``,
    ``constraint`` (the fallback when no label word is among the top tokens: one of
    :data:`CONSTRAINTS`), ``label_scoring`` (:data:`LABEL_SCORING`); chains: ``max_new_tokens``,
    ``temperature``, ``chain`` (False = labels only), ``chain_prompt`` (``reasoning`` |
    ``guided``); images: ``image_max_side`` (downscaled before sending; None = as is),
    ``image_size`` (vLLM + Qwen-VL: the square pixel budget); ``extra_body`` (merged into every
    request)."""

    api_key: str | None = None
    name: str | None = None
    version: str | None = None
    max_concurrency: int = 16
    requests_per_s: float | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    top_logprobs: int = 20
    constraint: str = "structured_outputs"
    label_scoring: str = "top_logprobs"
    max_new_tokens: int = 384
    temperature: float = 0.0
    chain: bool = True
    chain_prompt: str = "reasoning"
    image_max_side: int | None = 448
    image_size: int | None = None
    extra_body: dict | None = None

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {self.constraint!r}")
        if self.label_scoring not in LABEL_SCORING:
            raise ValueError(f"label_scoring must be one of {LABEL_SCORING}, got {self.label_scoring!r}")
        if self.chain_prompt not in ("reasoning", "guided"):
            raise ValueError("chain_prompt must be 'reasoning' or 'guided'")
