"""The Hugging Face VLM path: any ``AutoModelForImageTextToText`` model (Qwen2.5-VL first,
Idefics3/SmolVLM second), optionally with a LoRA adapter merged in.

Modules (serving and training both use them, so a post becomes the same tensors in both):

* :mod:`.processor` - processors built from image processor + tokenizer (no torchvision);
* :mod:`.loading` - local directory or hub id -> ``(model, processor, info)``; content versions;
* :mod:`.inputs` - images made safe and shrunk, chat-template rendering, batch encoding;
* :mod:`.student` - :class:`~model.backends.hf.student.HFStudent` (labels from one forward pass, chains
  by generation; the batched engine of :mod:`model.engine` as its fast path).

This package module imports nothing heavy: the family names below are read by code that
must stay light (spec checks, the engine's dispatch).
"""

#: Qwen-VL families: images are resized to a square pixel budget (``image_size**2``).
QWEN_FAMILIES = ("qwen2_5_vl", "qwen2_vl")
#: Idefics3 (SmolVLM v1): images resized to a longest edge of ``image_size``.
IDEFICS3 = "idefics3"
#: Families with a processor built here (no torchvision needed); others use AutoProcessor.
KNOWN_FAMILIES = (*QWEN_FAMILIES, IDEFICS3)
