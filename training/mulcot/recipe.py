"""Recipes: one YAML or TOML file per distillation run, validated by pydantic.

Every field has a description; ``mulcot distill run --schema`` prints them all (the recipe's
CLI help). Unknown keys are errors (typos do not pass silently). Relative paths are taken from
the current directory; dataset fields also accept split names under the data folder
(``t15/dev`` = ``../shared/data/t15/dev.jsonl``). A model field may be a local directory, a hub
id, or ``tiny:<family>`` (a tiny random model built by ``model.tiny`` into the run folder;
for tests and smoke runs only).

:func:`run_recipe` runs the stages in order - teacher, assistant, augment, student, evaluate -
each writing under ``out_dir/<stage>/``; a finished stage (its ``model_card.json`` or output
exists) is skipped on a rerun, and an interrupted training stage resumes from its last epoch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ..recipe import StrictModel as _Strict
from ..recipe import load_model_file
from ..recipe import print_schema as _print_schema
from ..recipe import schema_rows as _schema_rows


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
                                                       "evaluation) see images exactly as served: model.hf.inputs.")


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


class LoraSettings(_Strict):
    r: int = Field(16, description="LoRA rank.")
    alpha: int = Field(32, description="LoRA alpha.")
    dropout: float = Field(0.05, description="LoRA dropout.")
    targets: str | list[str] | None = Field(None, description="peft target_modules (default: the language model's "
                                                              "q/k/v/o/gate/up/down projections, not the vision tower).")
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved with the adapter "
                                                                "(e.g. [lm_head] for tiny random test models).")


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1, description="Epochs (the paper: 20).")
    lr: float = Field(3e-4, description="AdamW learning rate (the paper: 3e-4).")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    batch_size: int = Field(4, ge=1, description="Posts per step per process (each post gives a chain and a label item).")
    grad_accum: int = Field(10, ge=1, description="Gradient accumulation steps (effective batch = batch_size x grad_accum "
                                                  "x processes; the paper: 40).")
    max_steps: int | None = Field(None, description="Stop after this many optimizer steps.")
    image_size: int | None = Field(280, description="Image resolution of the model (Qwen: sqrt of the pixel budget; "
                                                    "the paper: about 280).")
    max_answer_tokens: int | None = Field(384, description="Truncate chain targets to this many tokens.")
    eval_batch_size: int = Field(8, description="Batch size for dev scoring.")
    plateau_patience: int = Field(1, description="Reduce-on-plateau patience (epochs) on dev accuracy.")
    plateau_factor: float = Field(0.5, description="Reduce-on-plateau factor.")
    log_every: int = Field(10, description="Log the training loss every N steps.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate mixed precision (bf16 on GPU).")
    cpu: bool = Field(False, description="Force CPU even when a GPU is present.")


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


class StudentConfig(_Strict):
    enabled: bool = Field(True, description="Run the student stage.")
    model: str = Field(description="Base model of the student (the paper: Qwen2.5-VL-3B-Instruct); must share the "
                                   "assistant's tokenizer.")
    dtype: str | None = Field(None, description="Load dtype.")
    lam: float = Field(0.3, ge=0, le=1, description="Weight of the KL term: (1-lam)*CE + lam*KL.")
    T: float = Field(2.0, gt=0, description="Distillation temperature (KL multiplied by T^2).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")


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
    def _check(self) -> "Recipe":
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


def _settings(train: TrainConfig, seed: int, progress: bool = True):
    from .trainer import TrainSettings

    return TrainSettings(**train.model_dump(), seed=seed, progress=progress)


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


def run_recipe(recipe: Recipe, *, dry_run: bool = False, stages: list[str] | None = None,
               console: Any = None, progress: bool = True) -> dict:
    """Run all (or the named) stages of ``recipe``; returns a summary dict (also written to
    ``out_dir/run_summary.json``)."""
    from .augment import augment, merge_chains
    from ..data import load_examples, resolve_data_path
    from .trainer import seed_everything

    info = check_recipe(recipe, console=console)
    if dry_run:
        return {"dry_run": True, **info}
    from accelerate import Accelerator

    stages = stages or ["teacher", "assistant", "augment", "student", "evaluate"]
    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(cpu=recipe.student.train.cpu or recipe.assistant.train.cpu,
                      gradient_accumulation_steps=recipe.assistant.train.grad_accum,
                      mixed_precision=recipe.assistant.train.mixed_precision)
    seed_everything(recipe.seed)
    d = recipe.data
    train_path = resolve_data_path(d.train)
    dev = load_examples(resolve_data_path(d.dev), limit=d.dev_limit or d.limit)
    summary: dict[str, Any] = {"recipe": recipe.model_dump(), "stages": {}}
    card = {"recipe": recipe.model_dump(), "data": info["datasets"]}

    def log(msg: str) -> None:
        if acc.is_main_process:
            (console.print if console is not None else print)(msg)

    # 1. teacher -------------------------------------------------------------------------
    teacher_out = out / "teacher" / "chains.jsonl"
    if "teacher" in stages and recipe.teacher.enabled:
        if acc.is_main_process:
            from .teacher import EndpointTeacher, HFTeacher, run_teacher

            t = recipe.teacher
            need = [ex for ex in load_examples(train_path, limit=d.limit) if not ex.teacher_cot and ex.label]
            need = need[: t.limit] if t.limit else need
            if t.backend == "endpoint":
                def factory():
                    return EndpointTeacher(t.base_url, t.model, api_key=os.environ.get(t.api_key_env),
                                           max_concurrency=t.max_concurrency, requests_per_s=t.requests_per_s,
                                           max_retries=t.max_retries, max_tokens=t.max_tokens,
                                           temperature=t.temperature, image_max_side=t.image_max_side,
                                           price_prompt_per_mtok=t.price_prompt_per_mtok,
                                           price_completion_per_mtok=t.price_completion_per_mtok)
            else:
                spec = resolve_model(t.model, out, recipe.seed)

                def factory():
                    return HFTeacher(spec, max_new_tokens=t.max_tokens, batch_size=t.batch_size, seed=recipe.seed)
            log(f"[teacher] {len(need)} posts without chains")
            s = run_teacher(need, factory, teacher_out, max_guided=t.max_guided, image_max_side=d.image_max_side,
                            progress=progress)
            summary["stages"]["teacher"] = s
            (out / "teacher" / "summary.json").write_text(json.dumps(s, indent=2))
        acc.wait_for_everyone()
    chained = out / "data" / "train_chains.jsonl"
    if acc.is_main_process:
        merge_chains([teacher_out], chained, base=train_path)
    acc.wait_for_everyone()
    train = load_examples(chained, limit=d.limit)

    # 2. assistant -----------------------------------------------------------------------
    a_dir = out / "assistant"
    if "assistant" in stages and recipe.assistant.enabled:
        if (a_dir / "model_card.json").exists():
            log("[assistant] done already (model_card.json exists): skipped")
        else:
            from .assistant import train_assistant

            a = recipe.assistant
            s = train_assistant(model=resolve_model(a.model, out, recipe.seed), train=train, dev=dev, out_dir=a_dir,
                                settings=_settings(a.train, recipe.seed, progress), lora_r=a.lora.r,
                                lora_alpha=a.lora.alpha, lora_dropout=a.lora.dropout, lora_targets=a.lora.targets,
                                lora_modules_to_save=a.lora.modules_to_save, dtype=a.dtype, card=card,
                                accelerator=acc)
            summary["stages"]["assistant"] = {"best": s["best"], "steps": s["steps"]}

    # 3. augment -------------------------------------------------------------------------
    aug_out = out / "augment" / "augmented.jsonl"
    if "augment" in stages and recipe.augment.enabled and (a_dir / "best").exists():
        if acc.is_main_process:
            g = recipe.augment
            cands = [ex for ex in train if not ex.teacher_cot]
            if d.label_only:
                cands += load_examples(resolve_data_path(d.label_only), limit=d.limit)
            cands = cands[: g.limit] if g.limit else cands
            s = augment(cands, str(a_dir / "best"), aug_out, samples=g.samples, temperature=g.temperature,
                        top_p=g.top_p, max_new_tokens=g.max_new_tokens, image_size=recipe.assistant.train.image_size,
                        seed=recipe.seed, batch_size=g.batch_size,
                        progress=progress)
            summary["stages"]["augment"] = s
            (out / "augment").mkdir(parents=True, exist_ok=True)
            (out / "augment" / "summary.json").write_text(json.dumps(s, indent=2))
        acc.wait_for_everyone()
    student_data = out / "data" / "student_train.jsonl"
    extra = out / "data" / "augmented_label_only.jsonl"
    if acc.is_main_process:
        merge_chains([teacher_out, aug_out], student_data, base=train_path)
        if d.label_only and aug_out.exists():  # kept chains of label-only posts (not in train)
            merge_chains([aug_out], extra)
    acc.wait_for_everyone()
    student_train = load_examples(student_data, limit=d.limit)
    if extra.exists():
        ids = {ex.id for ex in student_train}
        student_train += [ex for ex in load_examples(extra) if ex.id not in ids]

    # 4. student -------------------------------------------------------------------------
    s_dir = out / "student"
    if "student" in stages and recipe.student.enabled:
        if (s_dir / "model_card.json").exists():
            log("[student] done already (model_card.json exists): skipped")
        else:
            from .student import train_student

            st = recipe.student
            assistant_spec = str(a_dir / "best")
            s = train_student(model=resolve_model(st.model, out, recipe.seed), assistant=assistant_spec,
                              train=student_train, dev=dev, out_dir=s_dir,
                              settings=_settings(st.train, recipe.seed, progress), lam=st.lam, T=st.T,
                              lora_r=st.lora.r, lora_alpha=st.lora.alpha, lora_dropout=st.lora.dropout,
                              lora_targets=st.lora.targets, lora_modules_to_save=st.lora.modules_to_save,
                              dtype=st.dtype, card=card, accelerator=acc)
            summary["stages"]["student"] = {"best": s["best"], "steps": s["steps"]}

    # 5. evaluate ------------------------------------------------------------------------
    if "evaluate" in stages and recipe.evaluate.enabled and (s_dir / "best").exists() and acc.is_main_process:
        from model import load_student

        from ..evaluate import evaluate

        ev = recipe.evaluate
        splits = ev.splits or [d.test or d.dev]
        opts = dict(ev.options)
        opts.setdefault("image_size", recipe.student.train.image_size)
        student = load_student(f"hf:{s_dir / 'best'}", **opts)
        reports = {}
        for split in splits:
            exs = load_examples(resolve_data_path(split), limit=d.dev_limit or d.limit)
            name = Path(split).stem if Path(split).exists() else split.replace("/", "_")
            rep = evaluate(student, exs, chain=ev.chain, batch_size=ev.batch_size, out_dir=out / "eval" / name,
                           embeddings=ev.embeddings, train_log=s_dir / "train_log.jsonl", progress=progress,
                           console=console)
            reports[split] = {k: rep.get(k) for k in ("n", "accuracy", "weighted_f1", "macro_f1", "chain_parse_rate",
                                                      "label_chain_agreement", "bleu4", "rouge_l", "posts_per_s")}
        summary["stages"]["evaluate"] = reports
        # record the final metrics in the student's model card
        card_path = s_dir / "model_card.json"
        if card_path.exists():
            mc = json.loads(card_path.read_text())
            mc.setdefault("metrics", {})["evaluation"] = reports
            card_path.write_text(json.dumps(mc, indent=2, default=str))
    acc.wait_for_everyone()
    if acc.is_main_process:
        summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


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
    "run_recipe",
    "print_schema",
    "schema_rows",
    "resolve_model",
]
