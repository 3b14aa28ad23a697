"""The ``tiny:`` kind and the random-weight models of named shapes, built offline: the shape
registry (:mod:`.shapes`, ``Shape.from_name``), the locally trained tokenizer (:mod:`.tokenizer`)
and the builders (:mod:`.build`). A ``tiny:`` student is loaded as an HF student."""
