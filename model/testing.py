"""Old name of :mod:`model.tiny`, kept only until the last callers in other helpers' files
import ``model.tiny`` instead (tests/stream, tests/deploy, tests/compact, model/engine/shapes.py,
deploy/gpu/check_hf.py); to be deleted then. New code imports ``model.tiny``."""

from .tiny import *  # noqa: F403
from .tiny import QWEN_CHAT_TEMPLATE, SAMPLE_CHAINS  # noqa: F401
