"""The compact CPU student (spec ``default``), trained on ../shared/data.

Two trained parts on frozen pretrained encoders that install from PyPI:

* classifier: MiniLM (all-MiniLM-L6-v2) with LoRA + EfficientNet-Lite0 image features ->
  3 labels; trained on Twitter-2015 train (aspect), Twitter-2017 train (aspect, text only)
  and MVSA-Single train (post); one classifier per route chosen on its own dev set; optional
  distillation from a frozen assistant classifier with ``training.losses``-style
  (1 - lambda) CE + lambda KL at temperature T;
* explainer: SmolLM2-135M-Instruct with LoRA, trained on the teacher chains of
  Twitter-2015 dev (those whose prediction matches the gold label), conditioned on the
  label, to write a concise five-field chain.

Modules, in the order a run uses them (each imports only those before it):

* :mod:`.recipe` - :class:`CompactRecipe`, the recipe's fields (also the CLI options);
* :mod:`.features` - cached image features, dataset loading, batch encoding;
* :mod:`.export` - saving a classifier, exporting a loadable student directory;
* :mod:`.calibrate` - dev scoring, per-label logit offsets, weight averaging;
* :mod:`.classifier` - the joint training and the per-route specialise stage;
* :mod:`.explainer` - the chain writer;
* :mod:`.run` - the driver: stages, training log, model card.
* :mod:`.select` - model selection: k-fold CV of registered candidates, export of the adopted one.

``mulcot distill compact RECIPE`` (or ``python -m training.compact RECIPE``) runs it;
``mulcot distill cv`` (or ``python -m training.compact.select``) selects.
"""
