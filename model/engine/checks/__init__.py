"""The engine's checks, not the engine: the HF reference and comparisons (:mod:`.reference`),
``mulcot bench engine`` (:mod:`.bench`) and the random-weight model shapes (:mod:`.shapes`)."""
