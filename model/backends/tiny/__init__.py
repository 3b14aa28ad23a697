"""The ``tiny:`` kind: tiny random-initialised VLMs of real families, built offline
(:mod:`.build`); loaded as HF students."""
