"""Parts of the compact CPU student (spec ``default``): pretrained encoders from PyPI packages
plus our trained heads and adapters. See ``model.backends.compact`` and docs/model.md."""
