"""The ``noop`` kind: a model-free student for measuring the pipeline alone (:mod:`.student`)."""
