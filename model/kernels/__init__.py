"""Attention kernels registered with transformers' ``AttentionInterface`` (:mod:`.attention`),
used by the compact and HF students and the engine. Not a backend."""
