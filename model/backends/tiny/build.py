"""Random-initialised vision-language models of a named shape, built offline: the ``tiny:<family>``
spec kind, and the random-weight models of the engine's checks and ``deploy/gpu``.

Why this ships in the product package and not only in ``tests/``: no model hub is reachable
from where this project is built and tested, yet the HF path (``hf:`` students, the MulCoT-RD
training pipeline, the engine) must run end to end. ``load_student("tiny:qwen2_5_vl")`` and
recipe fields such as ``model: tiny:qwen2_5_vl`` (``training/recipes/tiny.yaml``: a full
``mulcot distill run`` in seconds) build one of these models locally; tests, the engine's
benchmark and checks (``model/engine/checks``) and the GPU checks (``deploy/gpu``) use the same
builders. The models are random: their output is gibberish, but deterministic for a seed.

What is built (the shape from :mod:`.shapes`, the tokenizer from :mod:`.tokenizer`):

* a byte-level BPE tokenizer trained locally, with the family's special tokens and chat template;
* a random-initialised model of the shape's architecture (Qwen2.5-VL, or Idefics3 = SmolVLM);
* the processor, built from its constructors (``AutoProcessor`` needs torchvision for the
  video processors, which does not load beside this torch; see ``model.backends.hf.processor``).

API (all deterministic for a given ``seed``)::

    build_model(shape, *, device="cpu", dtype=None, image_size=None, seed=0) -> (model, processor)  # in memory
    build_tiny(family, path, *, seed=0, image_size=56, vocab_size=1024) -> Path   # saved; family: qwen2_5_vl | smolvlm
    build_tiny_qwen2_5_vl(path, **kw) -> Path
    build_tiny_smolvlm(path, **kw) -> Path                        # Idefics3 architecture
    load_tiny(path) -> (model, processor)                         # plain transformers objects

Building a tiny one takes about a second. Tests that need a real chain teach one briefly
(``tests/support/tiny_helpers.py: overfit_tiny``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .shapes import Shape
from .tokenizer import IDEFICS3_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE, family_name, tiny_tokenizer


def _image_processor(shape: Shape, image_size: int) -> Any:
    if shape.family == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        px = image_size * image_size
        # a fresh ``size`` dict: the constructor's min/max_pixels path mutates a class-level default
        return Qwen2VLImageProcessorPil(size={"shortest_edge": px, "longest_edge": px}, patch_size=14, merge_size=2,
                                        temporal_patch_size=2)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    return Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                     max_image_size={"longest_edge": image_size})


def _image_seq_len(image_size: int) -> int:
    """Idefics3 image tokens per image (no tiling): ``(image_size/14)**2/4``."""
    return (image_size // 14) ** 2 // 4


def _model(shape: Shape, tok: Any, image_size: int, seed: int, device: str | None = None, dtype: Any = None):
    """The random-initialised model of ``shape`` (eval mode), with greedy generation defaults:
    built on ``device`` in ``dtype``, or (``device=None``) as a plain fp32 CPU model whose saved
    config records no dtype. The weights are the same for a seed either way."""
    import torch
    from transformers import Idefics3ForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    cls = Qwen2_5_VLForConditionalGeneration if shape.family == "qwen2_5_vl" else Idefics3ForConditionalGeneration
    config = shape.config(tok, image_size=image_size)
    torch.manual_seed(seed)
    if device is None:
        model = cls(config).eval()
    else:
        dtype = dtype or torch.float32
        with torch.device(device):
            model = cls._from_config(config, dtype=dtype)
        model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    return model


def build_model(shape: str, *, device: str = "cpu", dtype: Any = None, image_size: int | None = None, seed: int = 0,
                vocab_size: int = 1024):
    """``(model, processor)`` of the named shape (:meth:`Shape.from_name`), random weights, eval
    mode, on ``device`` in ``dtype`` (fp32 by default), built in memory. ``image_size``: the
    processor's resolution (default the shape's)."""
    s = Shape.from_name(shape)
    image_size = int(image_size or s.image_size)
    tok = tiny_tokenizer(s.family, vocab_size)
    model = _model(s, tok, image_size, seed, device, dtype)
    ip = _image_processor(s, image_size)
    if s.family == "qwen2_5_vl":
        from ..hf.processor import _qwen_processor_class

        return model, _qwen_processor_class()(image_processor=ip, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    from transformers import Idefics3Processor

    return model, Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=_image_seq_len(image_size),
                                    chat_template=IDEFICS3_CHAT_TEMPLATE)


def build_tiny(family: str, path: str | Path, *, seed: int = 0, image_size: int = 56, vocab_size: int = 1024) -> Path:
    """Build and save a tiny random model of ``family`` (``qwen2_5_vl``: Qwen2.5-VL; ``smolvlm``:
    Idefics3, the SmolVLM architecture) - model, tokenizer, processor - into ``path``, which
    ``from_pretrained`` then loads like a hub model. ``image_size`` is the processor's default
    resolution (Qwen: min = max pixels = ``image_size**2``, a multiple of 28; Idefics3: images
    resized to ``image_size`` square, no tiling). Returns ``path``."""
    family = family_name(family)
    shape = Shape.from_name(f"tiny-{family}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(family, vocab_size)
    model = _model(shape, tok, image_size, seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    _image_processor(shape, image_size).save_pretrained(path)
    if family == "qwen2_5_vl":
        template, meta = QWEN_CHAT_TEMPLATE, {"processor_class": "Qwen2_5_VLProcessor"}
    else:
        template, meta = IDEFICS3_CHAT_TEMPLATE, {"processor_class": "Idefics3Processor",
                                                  "image_seq_len": _image_seq_len(image_size)}
    # laid out the way model.backends.hf.processor.build_processor reads it (and hub repos are)
    (path / "chat_template.jinja").write_text(template)
    (path / "processor_config.json").write_text(json.dumps(meta, indent=2))
    (path / "mulcot_tiny.json").write_text(json.dumps({"family": family, "seed": seed, "random_init": True}))
    return path


def build_tiny_qwen2_5_vl(path: str | Path, **kwargs: Any) -> Path:
    """:func:`build_tiny` of a Qwen2.5-VL."""
    return build_tiny("qwen2_5_vl", path, **kwargs)


def build_tiny_smolvlm(path: str | Path, **kwargs: Any) -> Path:
    """:func:`build_tiny` of an Idefics3 (the SmolVLM architecture)."""
    return build_tiny("smolvlm", path, **kwargs)


def load_tiny(path: str | Path):
    """Load a tiny model directory as plain ``(model, processor)`` (fp32, eval mode), with the
    same processor construction as the HF backend. For training code and tests."""
    from ..hf.loading import load_model_and_processor

    model, processor, _ = load_model_and_processor(str(path), device="cpu")
    return model, processor


__all__ = ["build_model", "build_tiny", "build_tiny_qwen2_5_vl", "build_tiny_smolvlm", "family_name", "load_tiny"]
