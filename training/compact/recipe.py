"""The compact student's recipe: one TOML/YAML file whose fields are :class:`CompactRecipe`.

Each field's description is its help text, in ``mulcot distill compact --help`` (where the scalar
fields are options) and in ``mulcot distill compact --schema``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..recipe import StrictModel, load_model_file


class CompactRecipe(StrictModel):
    """Recipe of the compact student. Every field can be set in the TOML/YAML recipe file."""

    out: str = Field("runs/compact", description="Output directory (trained parts, model card, logs).")
    seed: int = Field(13, description="Seed for Python and torch (data order, initialisation).")
    image_size: int = Field(160, description="EfficientNet-Lite0 input side in pixels (160 keeps labels-only above "
                                             "50 posts/s on 2 cores).")
    train_sets: list[str] = Field(
        default_factory=lambda: ["t15/train.jsonl", "t17_text_only/train.jsonl", "mvsa_single/train.jsonl"],
        description="Training files, relative to the data directory.")
    dev_sets: list[str] = Field(default_factory=lambda: ["t15/dev.jsonl", "mvsa_single/dev.jsonl"],
                                description="Dev files; the epoch is chosen on their mean accuracy (then F1).")
    chain_sets: list[str] = Field(default_factory=lambda: ["t15/dev.jsonl"],
                                  description="Files whose teacher chains train the explainer.")
    routes: dict[str, str] = Field(
        default_factory=lambda: {"aspect": "t15/dev.jsonl", "post": "mvsa_single/dev.jsonl"},
        description="One classifier per route, each the epoch that is best on its own dev set (one of dev_sets): "
                    "posts with an aspect go to `aspect`, the others to `post`. Empty: one classifier, chosen on "
                    "the mean dev accuracy.")
    calibrate: bool = Field(True, description="After training, tune each route's per-label logit offsets on its dev "
                                              "set (objective: accuracy + macro F1 for `aspect`, accuracy + "
                                              "weighted F1 for `post`).")
    specialise: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Route -> train sets: after the joint training, continue that route's classifier on its own "
                    "domain only (e.g. post = [\"mvsa_single/train.jsonl\"]) for specialise_epochs, keeping an "
                    "epoch only when its calibrated dev score beats the classifier it started from.")
    specialise_epochs: int = Field(3, description="Epochs of the specialise stage.")
    specialise_lr: float = Field(3e-4, description="Learning rate of the specialise stage.")
    average_last: int = Field(
        0, description="Also try, per route, the uniform average of the trained weights (LoRA factors and heads) of "
                       "the last N epochs of the joint training, and of the specialise stage: a one-run model soup, "
                       "at no cost when serving. The average replaces the route's classifier only when its dev "
                       "(accuracy, F1), offsets tuned, beats the classifier chosen without it. 0 or 1: off.")
    classifier: dict = Field(default_factory=dict, description="Overrides of model.backends.compact.text.ClassifierConfig.")
    epochs: int = Field(4, description="Epochs of the joint classifier training.")
    batch_size: int = Field(32, description="Posts per classifier training step.")
    lr: float = Field(1e-3, description="AdamW learning rate of the LoRA factors.")
    head_lr: float = Field(1e-3, description="AdamW learning rate of the image projection and the head.")
    weight_decay: float = Field(0.01, description="AdamW weight decay.")
    warmup: float = Field(0.06, description="Share of the steps with a linear learning-rate warm-up.")
    lam: float = Field(0.0, description="Distillation weight lambda (0 = plain CE; the method's 0.3 needs "
                                        "`assistant`).")
    temperature: float = Field(2.0, description="Distillation temperature T (the KL is multiplied by T^2).")
    grounding_student: str = Field(
        "default", description="Student spec (a compact student) whose labels and evidence lines build the chain "
                               "writer's targets when explainer.grounded_targets is true (docs/model.md).")
    assistant: str | None = Field(None, description="Directory of a trained classifier used as the frozen assistant "
                                                    "for distillation.")
    threads: int = Field(2, description="torch CPU threads.")
    limit: int | None = Field(None, description="Read at most this many posts per file (smoke tests and dry runs).")
    explainer: dict = Field(default_factory=dict, description="Overrides of model.backends.compact.explainer.ExplainerConfig "
                                                              "(LoRA shape, words per field, max new tokens).")
    explainer_from: str | None = Field(None, description="Reuse the chain writer of this earlier run (its "
                                                         "explainer.* files) instead of training one.")
    explainer_epochs: int = Field(2, description="Epochs of the explainer training.")
    explainer_batch_size: int = Field(8, description="Chains per explainer training step.")
    explainer_lr: float = Field(3e-4, description="AdamW learning rate of the explainer's LoRA.")


def load_compact_recipe(path: str | Path | None, overrides: list[str] | None = None,
                        updates: dict | None = None) -> CompactRecipe:
    """The recipe of a TOML/YAML file (defaults when ``path`` is None) with ``key=value``
    overrides, then ``updates`` (field -> value, e.g. from CLI options)."""
    return load_model_file(CompactRecipe, path, overrides, updates)
