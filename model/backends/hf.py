"""Old import path of the HF student: the code lives in :mod:`model.hf` (processor, loading,
inputs, student). Kept as a re-export until the callers outside H5's files (model/engine,
model/backends/openai.py, deploy/) import ``model.hf.*``; new code imports ``model.hf.*``."""

from ..hf import KNOWN_FAMILIES  # noqa: F401
from ..hf.inputs import encode_batch, encode_rendered, messages_for, prepare_image, render_prompt  # noqa: F401
from ..hf.loading import load_model_and_processor, resolve_local  # noqa: F401
from ..hf.processor import _qwen_processor_class, build_processor, save_processor  # noqa: F401
from ..hf.student import DEFAULT_IMAGE_SIZE, HFStudent, chain_with_label  # noqa: F401
