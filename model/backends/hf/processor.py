"""Processors of the HF VLMs, built from their image processor (PIL backend) and tokenizer:
``AutoProcessor`` builds the video processor too, which needs torchvision, and PyPI torchvision
does not load beside this torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import IDEFICS3, QWEN_FAMILIES


def _qwen_processor_class():
    from transformers import Qwen2_5_VLProcessor

    class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL processor without the video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template)

    return Qwen2_5_VLImageTextProcessor


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _chat_template(local: Path, tokenizer: Any) -> str | None:
    jinja = local / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    data = _read_json(local / "chat_template.json")
    if data.get("chat_template"):
        return data["chat_template"]
    data = _read_json(local / "processor_config.json")
    if isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def build_processor(local: str | Path, config: Any | None = None) -> Any:
    """Build the processor of the model saved in directory ``local`` without torchvision.

    Qwen2-VL/Qwen2.5-VL: PIL ``Qwen2VLImageProcessorPil`` + tokenizer; Idefics3 (SmolVLM v1):
    ``Idefics3ImageProcessorPil`` + tokenizer. Other families fall back to ``AutoProcessor``.
    The tokenizer pads on the left.
    """
    from transformers import AutoConfig, AutoTokenizer

    local = Path(local)
    config = config or AutoConfig.from_pretrained(local, trust_remote_code=False)
    family = config.model_type
    tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    tokenizer.padding_side = "left"
    template = _chat_template(local, tokenizer)
    if family in QWEN_FAMILIES:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        image_processor = Qwen2VLImageProcessorPil.from_pretrained(local)
        processor = _qwen_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                            chat_template=template)
    elif family == IDEFICS3:
        from transformers import Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        image_processor = Idefics3ImageProcessorPil.from_pretrained(local)
        seq_len = _read_json(local / "processor_config.json").get("image_seq_len")
        if not seq_len:
            v = config.vision_config
            seq_len = int((v.image_size // v.patch_size) ** 2 / (config.scale_factor**2))
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_len=int(seq_len), chat_template=template)
    else:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(local, trust_remote_code=False)
        processor.tokenizer.padding_side = "left"
    if getattr(processor, "tokenizer", None) is not None and processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def save_processor(processor: Any, path: str | Path, *, image_seq_len: int | None = None) -> None:
    """Save a processor built by :func:`build_processor` (tokenizer, image processor, chat
    template) so that :func:`build_processor` reads it back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    if processor.chat_template:
        (path / "chat_template.jinja").write_text(processor.chat_template)
    meta = {"processor_class": type(processor).__name__.replace("ImageText", "")}
    seq = image_seq_len or getattr(processor, "image_seq_len", None)
    if seq:
        meta["image_seq_len"] = int(seq)
    (path / "processor_config.json").write_text(json.dumps(meta, indent=2))
