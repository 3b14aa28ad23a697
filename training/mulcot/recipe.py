"""Recipes: one YAML or TOML file per distillation run, validated by pydantic.

Every field has a description; ``mulcot distill run --schema`` prints them all (the recipe's
CLI help). Unknown keys are errors (typos do not pass silently). Relative paths are taken from
the current directory; dataset fields also accept split names under the data folder
(``t15/dev`` = ``../shared/data/t15/dev.jsonl``). A model field may be a local directory, a hub
id, or ``tiny:<family>`` (a tiny random model built by ``model.backends.tiny.build`` into the run folder;
for tests and smoke runs only).

:func:`training.mulcot.run.run_recipe` runs the stages in order - teacher, assistant, augment,
student, evaluate - each writing under ``out_dir/<stage>/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ..recipe import StrictModel as _Strict
from ..recipe import load_model_file
from ..recipe import print_schema as _print_schema
from ..recipe import schema_rows as _schema_rows
from .trainer import TrainConfig
from .vlm import LoraSettings


class DataConfig(_Strict):
    train: str = Field(description="Labelled training posts (JSONL path or split name, e.g. t15/train). Rows with "
                                   "`teacher_cot` already have chains; the teacher stage writes chains for the others.")
    dev: str = Field(description="Dev split for model selection (dev accuracy, ties by F1).")
    test: str | None = Field(None, description="Test split, evaluated once at the end (optional).")
    label_only: str | None = Field(None, description="Extra label-only posts for rationale augmentation (optional); "
                                                     "train rows without a chain are always candidates.")
    limit: int | None = Field(None, description="Use only the first N rows of each file (tests, smoke runs).")
    dev_limit: int | None = Field(None, description="Use only the first N dev/test rows (defaults to `limit`).")
    image_max_side: int | None = Field(320, description="Teacher stage: downscale images to this longer side when "
                                                       "loading. The assistant and student (training, augmentation, "
                                                       "evaluation) see images exactly as served: model.backends.hf.inputs.")


class TeacherConfig(_Strict):
    enabled: bool = Field(True, description="Run the teacher stage for training posts without a chain.")
    backend: Literal["endpoint", "hf"] = Field("endpoint", description="`endpoint`: OpenAI-compatible chat API; "
                                                                        "`hf`: in-process HF model.")
    model: str = Field("Qwen/Qwen2.5-VL-72B-Instruct", description="Model name served by the endpoint, or the hf "
                                                                   "model (dir/hub id/`tiny:<family>`).")
    base_url: str | None = Field(None, description="Endpoint base URL, e.g. http://localhost:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_guided: int = Field(2, ge=0, description="Label-guided retries for posts the free pass gets wrong.")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    requests_per_s: float | None = Field(None, description="Request-rate limit (None: unlimited).")
    max_retries: int = Field(4, ge=0, description="Retries per request on 429/5xx/transport errors (exp. backoff).")
    max_tokens: int = Field(768, description="Max tokens per answer.")
    temperature: float = Field(0.0, description="Sampling temperature of the teacher.")
    image_max_side: int | None = Field(640, description="Longer side of images sent to the endpoint.")
    price_prompt_per_mtok: float = Field(0.0, description="USD per million prompt tokens (cost report).")
    price_completion_per_mtok: float = Field(0.0, description="USD per million completion tokens (cost report).")
    limit: int | None = Field(None, description="Ask the teacher about at most N posts.")
    batch_size: int = Field(8, ge=1, description="hf backend: prompts generated together in one batch.")


class AssistantConfig(_Strict):
    enabled: bool = Field(True, description="Run the assistant stage.")
    model: str = Field(description="Base model of the assistant (the paper: Qwen2.5-VL-7B-Instruct).")
    dtype: str | None = Field(None, description="Load dtype (bf16/fp32; default bf16 on GPU, fp32 on CPU).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")


class AugmentConfig(_Strict):
    enabled: bool = Field(True, description="Sample chains from the assistant for label-only posts.")
    samples: int = Field(2, ge=1, description="Chains sampled per post until one matches gold.")
    temperature: float = Field(0.7, description="Sampling temperature (the paper: about 0.7).")
    top_p: float = Field(0.95, description="Nucleus sampling p.")
    max_new_tokens: int = Field(384, description="Max tokens per sampled chain.")
    limit: int | None = Field(None, description="Augment at most N posts.")
    batch_size: int = Field(8, ge=1, description="Prompts sampled together in one generate call.")


class StudentConfig(AssistantConfig):
    """The assistant's fields (model, dtype, lora, train) plus the distillation weights."""

    enabled: bool = Field(True, description="Run the student stage.")
    model: str = Field(description="Base model of the student (the paper: Qwen2.5-VL-3B-Instruct); must share the "
                                   "assistant's tokenizer.")
    lam: float = Field(0.3, ge=0, le=1, description="Weight of the KL term: (1-lam)*CE + lam*KL.")
    T: float = Field(2.0, gt=0, description="Distillation temperature (KL multiplied by T^2).")


class EvaluateConfig(_Strict):
    enabled: bool = Field(True, description="Evaluate the student at the end.")
    splits: list[str] | None = Field(None, description="Datasets to evaluate on (default: test, else dev).")
    chain: bool = Field(True, description="Also generate and score chains.")
    batch_size: int = Field(8, description="Posts per predict call.")
    embeddings: bool = Field(True, description="Compute the MiniLM embedding cosine vs teacher chains.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options for load_student (image_size, "
                                                                     "max_new_tokens, device, ...).")


class Recipe(_Strict):
    name: str = Field(description="Run name.")
    seed: int = Field(0, description="Seed for Python, NumPy, torch and data order.")
    out_dir: str = Field(description="Run folder; each stage writes under out_dir/<stage>/.")
    data: DataConfig
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    assistant: AssistantConfig
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    student: StudentConfig
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.assistant.train.mixed_precision != self.student.train.mixed_precision:
            raise ValueError("assistant.train.mixed_precision and student.train.mixed_precision must be equal "
                             "(one accelerate Accelerator serves the run)")
        if self.teacher.enabled and self.teacher.backend == "endpoint" and not self.teacher.base_url:
            raise ValueError("teacher.base_url is required for the endpoint backend (or set teacher.enabled: false)")
        return self


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML (.yaml/.yml) or TOML (.toml) recipe; ``overrides`` are ``a.b.c=value`` strings
    (value parsed as YAML)."""
    return load_model_file(Recipe, path, overrides)


def schema_rows(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every field of the recipe, nested blocks expanded."""
    return _schema_rows(model, prefix)


def print_schema(console: Any = None) -> None:
    _print_schema(Recipe, console)


# ------------------------------------------------------------------------------ running


def resolve_model(spec: str, out_dir: Path, seed: int = 0) -> str:
    """The model directory or hub id a model field names (``model.loading.hf_source``):
    ``tiny:<family>`` is built into ``out_dir/tiny-<family>``; ``hf:<m>``, a directory or a hub id
    are used as they are."""
    from model.loading import SpecError, hf_source

    target, adapter = hf_source(spec, workdir=out_dir, seed=seed)
    if adapter:
        raise SpecError(f"model field {spec!r}: a base model takes no +adapter")
    return target


def _check_model_field(m: str) -> tuple[str, str | None]:
    """(what the dry run says about a model field, the problem or None), without building or
    loading anything."""
    from model.loading import SpecError, parse_spec

    try:
        parsed = parse_spec(m) if ":" in m else None
    except SpecError as e:
        return m, str(e)
    if parsed is not None and parsed.kind == "tiny":
        return f"{m} (built at run time)", None
    if parsed is not None and parsed.kind != "hf":
        return m, f"a {parsed.kind} spec names no HF weights to train"
    path = parsed.target if parsed is not None else m
    if Path(path).exists():
        if not (Path(path) / "config.json").exists():
            return f"{m} (local)", f"{m} has no config.json"
        return f"{m} (local)", None
    return f"{m} (hub id: needs network or a HF cache)", None


def check_recipe(recipe: Recipe, *, console: Any = None) -> dict:
    """The dry run: load every dataset (image files checked to exist), parse chains, check
    model paths and the teacher config. Raises ValueError listing every problem found."""
    from ..data import dataset_stats, load_examples, resolve_data_path

    problems: list[str] = []
    info: dict[str, Any] = {"datasets": {}, "models": {}}
    d = recipe.data
    for name in ("train", "dev", "test", "label_only"):
        spec = getattr(d, name)
        if spec is None:
            continue
        try:
            path = resolve_data_path(spec)
            limit = d.limit if name in ("train", "label_only") else (d.dev_limit or d.limit)
            exs = load_examples(path, limit=limit)
            st = dataset_stats(exs, image_sizes=False)
            missing = [str(ex.image_path) for ex in exs if ex.image_path is not None and not ex.image_path.exists()]
            if missing:
                problems.append(f"data.{name}: {len(missing)} image(s) missing, e.g. {missing[0]}")
            if not exs:
                problems.append(f"data.{name}: no rows in {path}")
            if name in ("train", "dev") and st["unlabeled"]:
                problems.append(f"data.{name}: {st['unlabeled']} rows without a label")
            info["datasets"][name] = {"path": str(path), "n": st["n"], "labels": st["labels"],
                                      "with_chain": st["with_teacher_cot"], "chain_parse_rate": st["chain_parse_rate"]}
        except (OSError, ValueError) as e:
            problems.append(f"data.{name}: {e}")
    for stage in ("assistant", "student"):
        cfg = getattr(recipe, stage)
        if not cfg.enabled:
            continue
        info["models"][stage], problem = _check_model_field(cfg.model)
        if problem:
            problems.append(f"{stage}.model: {problem}")
    if recipe.teacher.enabled:
        t = recipe.teacher
        info["teacher"] = f"{t.backend}: {t.model}" + (f" at {t.base_url}" if t.base_url else "")
        if t.backend == "endpoint" and not os.environ.get(t.api_key_env):
            info["teacher"] += f" (no ${t.api_key_env} set: requests go without a key)"
    if (recipe.assistant.enabled and recipe.student.enabled and recipe.assistant.model == recipe.student.model
            and not recipe.assistant.model.startswith("tiny:")):
        info["note"] = "assistant and student share a base model"
    if console is not None:
        from rich.table import Table

        t = Table(title=f"recipe {recipe.name}: dry run")
        t.add_column("item")
        t.add_column("value", overflow="fold")
        for k, v in info["datasets"].items():
            t.add_row(f"data.{k}", f"{v['n']} posts {v['labels']}, {v['with_chain']} with chains ({v['path']})")
        for k, v in info["models"].items():
            t.add_row(f"{k}.model", v)
        if "teacher" in info:
            t.add_row("teacher", info["teacher"])
        t.add_row("out_dir", recipe.out_dir)
        console.print(t)
    if problems:
        raise ValueError("recipe check failed:\n  - " + "\n  - ".join(problems))
    return info


__all__ = [
    "Recipe",
    "DataConfig",
    "TeacherConfig",
    "LoraSettings",
    "TrainConfig",
    "AssistantConfig",
    "AugmentConfig",
    "StudentConfig",
    "EvaluateConfig",
    "load_recipe",
    "check_recipe",
    "print_schema",
    "schema_rows",
    "resolve_model",
]
