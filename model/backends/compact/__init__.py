"""The compact CPU student (spec ``default`` / ``compact:<dir>``): :mod:`.student` and its parts
(pretrained encoders from PyPI packages plus our trained heads and adapters). See docs/model.md."""
