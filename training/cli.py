"""``mulcot distill ...`` and ``mulcot data ...``: click groups, registered under the
``mulcot.commands`` entry-point group (pyproject) and discovered by the ``mulcot`` console script.
Also runnable alone: ``python -m training.cli distill ...``.

Every verb's options are generated (:class:`training.options.Options`) from the config models
of its stage - ``TeacherConfig``, ``AssistantConfig``/``StudentConfig`` with their ``lora`` and
``train`` blocks, ``AugmentConfig``, ``EvaluateConfig``, ``CompactRecipe``, the CV's options -
plus a small model per verb of what it reads and writes (``*Args`` below). A field's
description is its option's help; old option names stay as aliases.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import Field, FilePath

from .compact.recipe import CompactRecipe
from .compact.run import STAGES as COMPACT_STAGES
from .mulcot.recipe import AssistantConfig, AugmentConfig, EvaluateConfig, StudentConfig, TeacherConfig
from .mulcot.run import STAGES
from .options import Options
from .recipe import StrictModel


def _console():
    from rich.console import Console

    return Console()


# ------------------------------------------------------------------------------ data


@click.group(help="Datasets in the JSONL format of ../shared/data.")
def data() -> None:
    pass


class StatsArgs(StrictModel):
    file: str = Field(description="A JSONL file or a split name under the data folder (t15/dev).")
    as_json: bool = Field(False, description="Print the stats as JSON instead of a table.")
    images: bool = Field(True, description="Open the image files for their sizes (--no-images: faster).")


_STATS = Options(StatsArgs, arguments=["file"], flags={"as_json": "--json"})


@data.command("stats", help="Print a dataset card: counts, label balance, image sizes, chain parse rate.")
@_STATS
def data_stats(**kw) -> None:
    from .data import dataset_stats, print_dataset_card, resolve_data_path

    a = _STATS.build(kw)
    path = resolve_data_path(a.file)
    stats = dataset_stats(path, image_sizes=a.images)
    if a.as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        print_dataset_card(stats, title=str(path), console=_console())


# ------------------------------------------------------------------------------ distill


@click.group(help="Chain-of-thought distillation: teacher -> assistant -> student (MulCoT-RD), and evaluation.")
def distill() -> None:
    pass


class RecipeStageArgs(StrictModel):
    """A stage verb can run its stage of a recipe instead of its own options."""

    recipe: FilePath | None = Field(None, description="Run this stage of a recipe instead (other options ignored).")
    overrides: list[str] = Field(default_factory=list, description="Recipe override key.path=value.")


_RECIPE_STAGE = Options(RecipeStageArgs, flags={"overrides": "--set"})


def stage_verb(stage: str, help: str, *options: Options, required: tuple[str, ...] = ()):
    """Decorator: the ``mulcot distill <stage>`` verb with ``options`` and ``--recipe``/``--set``.
    With ``--recipe`` it runs that stage of the recipe instead; otherwise the options
    ``required`` must be given, and the decorated function runs."""

    def deco(f):
        @functools.wraps(f)
        def verb(**kw) -> None:
            a = _RECIPE_STAGE.build(kw)
            if a.recipe is not None:
                from .mulcot.recipe import load_recipe
                from .mulcot.run import run_recipe

                run_recipe(load_recipe(a.recipe, a.overrides), stages=[stage], console=_console())
                return
            if not all(kw.get(n) for n in required):
                flags = [f"--{n.replace('_', '-')}" for n in required]
                raise click.UsageError(f"{', '.join(flags[:-1])} and {flags[-1]} are required without --recipe")
            f(**kw)

        for opts in reversed((*options, _RECIPE_STAGE)):
            verb = opts(verb)
        return distill.command(stage, help=help)(verb)

    return deco


class TeacherArgs(StrictModel):
    data: str | None = Field(None, description="Labelled posts (JSONL or split name).")
    out: Path | None = Field(None, description="Output JSONL (appended; done ids skipped).")
    limit: int | None = Field(None, description="Only the first N posts.")
    include_chained: bool = Field(False, description="Also posts that already have a teacher_cot.")


_TEACHER_ARGS = Options(TeacherArgs, flags={"include_chained": "--all"})
_TEACHER = Options(TeacherConfig, skip=["enabled", "limit"],
                   aliases={"max_concurrency": "--concurrency", "requests_per_s": "--rps",
                            "price_prompt_per_mtok": "--price-in", "price_completion_per_mtok": "--price-out"})


@stage_verb("teacher", "Ask a teacher MLLM for chains (label-free, then label-guided retries); appends to OUT "
                       "(resumable).", _TEACHER_ARGS, _TEACHER, required=("data", "out"))
def teacher_cmd(**kw) -> None:
    a, cfg = _TEACHER_ARGS.build(kw), _TEACHER.build(kw)
    if cfg.backend == "endpoint" and not cfg.base_url:
        raise click.UsageError("--base-url is required for the endpoint backend")
    from .data import load_examples, resolve_data_path
    from .mulcot.run import teacher_factory
    from .mulcot.teacher import run_teacher

    exs = [ex for ex in load_examples(resolve_data_path(a.data), limit=a.limit)
           if ex.label is not None and (a.include_chained or not ex.teacher_cot)]
    errors: list[str] = []
    factory = _recording(teacher_factory(cfg, out_dir=a.out.parent), errors)
    summary = run_teacher(exs, factory, a.out, max_guided=cfg.max_guided, progress=True)
    click.echo(json.dumps(summary, indent=2))
    asked = summary["total"] - summary["skipped_done"]
    last = f"; last error: {errors[-1]}" if errors else ""
    if asked and summary["errors"] == asked:
        raise click.ClickException(f"every request to the teacher failed: none of {asked} posts got an answer{last}")
    if summary["errors"]:
        click.echo(f"warning: {summary['errors']} of {asked} posts got no answer from the teacher (not written; "
                   f"a rerun retries them){last}", err=True)


def _recording(factory, errors: list[str]):
    """``factory`` whose backends record each failed request's reason in ``errors``."""
    def build():
        backend = factory()
        generate = backend.generate

        async def recorded(*args, **kw):
            try:
                return await generate(*args, **kw)
            except Exception as exc:
                errors.append(" ".join(str(exc).split()) or type(exc).__name__)
                raise

        backend.generate = recorded
        return backend

    return build


class TrainArgs(StrictModel):
    """What a stand-alone training verb reads and writes."""

    train: str | None = Field(None, description="Training posts with chains (JSONL or split name).")
    dev: str | None = Field(None, description="Dev posts for selection.")
    out: Path | None = Field(None, description="Output folder.")
    limit: int | None = Field(None, description="Only the first N train/dev rows.")
    seed: int = Field(0, description="Seed for Python, NumPy, torch and data order.")


class StudentArgs(TrainArgs):
    assistant: str | None = Field(None, description="Trained assistant (adapter dir, or base+adapter).")


def _stage_options(model: type) -> Options:
    """The options of the assistant or student block: its fields, ``--lora-*``, the ``train`` block."""
    return Options(model, skip=["enabled"], required=False, prefixes={"train": "", "lora": "lora_"},
                   aliases={"lora.modules_to_save": "--modules-to-save"})


_TRAIN_ARGS, _STUDENT_ARGS = Options(TrainArgs), Options(StudentArgs)
_ASSISTANT, _STUDENT = _stage_options(AssistantConfig), _stage_options(StudentConfig)


def _train_inputs(files: TrainArgs, cfg: Any, given: dict) -> dict:
    """The keyword arguments a stand-alone training verb gives ``train_assistant`` /
    ``train_student``. A short run (``--max-steps`` under 20) logs every step unless
    ``--log-every`` says otherwise."""
    from .data import load_examples, resolve_data_path
    from .mulcot.recipe import resolve_model
    from .mulcot.run import train_settings

    train_cfg = cfg.train
    if "log_every" not in given.get("train", {}):
        train_cfg = train_cfg.model_copy(update={"log_every": 1 if (train_cfg.max_steps or 99) < 20 else 10})
    train, dev = resolve_data_path(files.train), resolve_data_path(files.dev)
    return dict(model=resolve_model(cfg.model, files.out, files.seed),
                train=load_examples(train, limit=files.limit), dev=load_examples(dev, limit=files.limit),
                out_dir=files.out, settings=train_settings(train_cfg, files.seed), lora=cfg.lora, dtype=cfg.dtype,
                card={"data": {"train": str(train), "dev": str(dev), "limit": files.limit}})


def _echo_training(s: dict) -> None:
    click.echo(json.dumps({"best": s["best"], "steps": s["steps"], "processes": s["processes"]}, indent=2))


@stage_verb("assistant", "Multi-task LoRA training of the assistant: CE(chain) + CE(label).", _TRAIN_ARGS, _ASSISTANT,
            required=("model", "train", "dev", "out"))
def assistant_cmd(**kw) -> None:
    from .mulcot.assistant import train_assistant

    cfg = _ASSISTANT.build(kw)
    _echo_training(train_assistant(**_train_inputs(_TRAIN_ARGS.build(kw), cfg, _ASSISTANT.given(kw))))


@stage_verb("student", "Joint chain + label training of the student, distilled from the frozen assistant: "
                       "(1-lam)*CE + lam*T^2*KL on answer tokens, per task.", _STUDENT_ARGS, _STUDENT,
            required=("model", "assistant", "train", "dev", "out"))
def student_cmd(**kw) -> None:
    from .mulcot.student import train_student

    a, cfg = _STUDENT_ARGS.build(kw), _STUDENT.build(kw)
    _echo_training(train_student(assistant=a.assistant, lam=cfg.lam, T=cfg.T,
                                 **_train_inputs(a, cfg, _STUDENT.given(kw))))


class AugmentArgs(StrictModel):
    assistant: str | None = Field(None, description="Assistant: adapter dir (e.g. RUN/assistant/best) or hf spec.")
    data: str | None = Field(None, description="Posts to augment (rows without teacher_cot are used).")
    out: Path | None = Field(None, description="Output JSONL (appended; resumable).")
    image_size: int | None = Field(None, description="Image resolution of the assistant (default: its own).")
    limit: int | None = Field(None, description="Only the first N posts of --data.")
    seed: int = Field(0, description="Seed of the sampling.")
    merge_with: list[str] = Field(default_factory=list, description="Teacher chain files to merge with (written "
                                                                    "to --merged).")
    merged: Path | None = Field(None, description="Write DATA with chains from --merge-with files and OUT here.")


_AUGMENT_ARGS = Options(AugmentArgs)
_AUGMENT = Options(AugmentConfig, skip=["enabled", "limit"])


@stage_verb("augment", "Sample chains from the trained assistant for label-only posts; keep matches.", _AUGMENT_ARGS,
            _AUGMENT, required=("assistant", "data", "out"))
def augment_cmd(**kw) -> None:
    from .data import load_examples, resolve_data_path
    from .mulcot.augment import augment, merge_chains

    a, g = _AUGMENT_ARGS.build(kw), _AUGMENT.build(kw)
    path = resolve_data_path(a.data)
    s = augment(load_examples(path, limit=a.limit), a.assistant, a.out, samples=g.samples, temperature=g.temperature,
                top_p=g.top_p, max_new_tokens=g.max_new_tokens, image_size=a.image_size, seed=a.seed,
                batch_size=g.batch_size, progress=True)
    if a.merged:
        s["merged"] = merge_chains([*a.merge_with, a.out], a.merged, base=path)
    click.echo(json.dumps(s, indent=2))


class EvaluateArgs(StrictModel):
    student: str = Field(description="Student spec, e.g. default, noop, hf:<dir>[+<adapter>].")
    data: str = Field(description="Labelled posts (JSONL or split name, e.g. t15/test).")
    out: Path | None = Field(None, description="Write report.json, predictions.jsonl, PNGs here.")
    limit: int | None = Field(None, description="Only the first N posts.")
    train_log: FilePath | None = Field(None, description="train_log.jsonl to plot loss curves from.")
    image_max_side: int | None = Field(None, description="Downscale images before the student sees them.")
    options: list[str] = Field(default_factory=list, description="load_student option key=value (e.g. "
                                                                 "image_size=280).")
    grounding: bool = Field(False, description="Also the grounding metrics: posts with images rerun with another "
                                               "post's image and with none (about 3x the work; training/grounding.py).")
    grounding_limit: int | None = Field(None, description="Grounding on the first N posts with images only.")


_EVALUATE_ARGS = Options(EvaluateArgs, flags={"options": "--option"})
_EVALUATE = Options(EvaluateConfig, skip=["enabled", "splits", "options"])


@distill.command("evaluate", help="Evaluate a student (SPEC as load_student takes: default, noop, hf:<dir>, ...) "
                                  "on a labelled JSONL file; prints a table, writes report.json, predictions.jsonl, plots.")
@_EVALUATE_ARGS
@_EVALUATE
def evaluate_cmd(**kw) -> None:
    from model import load_student
    from model.loading import parse_options

    from .data import load_examples, resolve_data_path
    from .evaluate import evaluate

    a, ev = _EVALUATE_ARGS.build(kw), _EVALUATE.build(kw)
    try:
        options = parse_options(a.options)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--option") from None
    try:
        student = load_student(a.student, **options)
        exs = load_examples(resolve_data_path(a.data), limit=a.limit)
    except (OSError, ValueError) as e:  # missing weights/data, bad spec (SpecError is a ValueError)
        raise click.ClickException(str(e)) from None
    evaluate(student, exs, chain=ev.chain, batch_size=ev.batch_size, out_dir=a.out, embeddings=ev.embeddings,
             train_log=a.train_log, image_max_side=a.image_max_side, progress=True, console=_console(),
             grounding=a.grounding, grounding_limit=a.grounding_limit)
    if a.out:
        click.echo(f"wrote {a.out / 'report.json'}")


class RunArgs(StrictModel):
    recipe: FilePath | None = Field(None, description="The recipe file (YAML or TOML).")
    dry_run: bool = Field(False, description="Only check data and config (seconds); train nothing.")
    stages: list[Literal[STAGES]] = Field(default_factory=list, description="Run only these stages (repeatable).")
    overrides: list[str] = Field(default_factory=list, description="Override a recipe field: key.path=value (YAML "
                                                                   "value).")
    show_schema: bool = Field(False, description="Print every recipe field with its type, default and description.")


_RUN = Options(RunArgs, arguments=["recipe"], flags={"stages": "--stage", "overrides": "--set",
                                                     "show_schema": "--schema"})


@distill.command("run", help="Run every stage of a recipe (YAML/TOML): teacher, assistant, augment, student, evaluate.")
@_RUN
def run_cmd(**kw) -> None:
    from .mulcot.recipe import load_recipe, print_schema
    from .mulcot.run import run_recipe

    a = _RUN.build(kw)
    if a.show_schema:
        print_schema(_console())
        return
    if not a.recipe:
        raise click.UsageError("RECIPE is required (or --schema)")
    try:
        r = load_recipe(a.recipe, a.overrides)
    except Exception as e:  # pydantic ValidationError, YAML errors
        raise click.ClickException(f"invalid recipe {a.recipe}:\n{e}") from None
    try:
        run_recipe(r, dry_run=a.dry_run, stages=a.stages or None, console=_console())
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if a.dry_run:
        click.echo("dry run OK")
    else:
        click.echo(f"run finished: {Path(r.out_dir) / 'run_summary.json'}")


# ------------------------------------------------------------------------------ compact


class CompactArgs(StrictModel):
    recipe: FilePath | None = Field(None, description="The recipe file (TOML or YAML).")
    stage: Literal[COMPACT_STAGES] = Field("all", description="Run only this stage (the run folder keeps the "
                                                              "others' files).")
    export: Path | None = Field(None, description="After training, write a loadable student to this directory.")
    version: str | None = Field(None, description="Version written into the exported student.json (default: today).")
    overrides: list[str] = Field(default_factory=list, description="Override a recipe field: key=value (YAML value).")
    show_schema: bool = Field(False, description="Print every recipe field with its type, default and description.")


_COMPACT_ARGS = Options(CompactArgs, arguments=["recipe"], flags={"overrides": "--set", "show_schema": "--schema"})
_COMPACT = Options(CompactRecipe, over_file=True)


@distill.command(
    "compact",
    help="Train the compact CPU student (MiniLM+EfficientNet classifier, SmolLM2 chain writer) from a recipe "
    "such as training/recipes/compact.toml. Options set single recipe fields over the file; --set key=value "
    "sets any field (mappings too). --export DIR writes a loadable student (compact:DIR; "
    "model/weights/default is the shipped `default`).",
)
@_COMPACT_ARGS
@_COMPACT
def compact_cmd(**kw) -> None:
    from .compact.recipe import load_compact_recipe
    from .compact.run import run_compact
    from .recipe import print_schema

    a = _COMPACT_ARGS.build(kw)
    if a.show_schema:
        print_schema(CompactRecipe, _console(), title="compact recipe fields (TOML or YAML)")
        return
    try:
        r = load_compact_recipe(a.recipe, a.overrides, _COMPACT.given(kw))
    except Exception as e:  # pydantic ValidationError, TOML/YAML errors, bad --set
        raise click.ClickException(f"invalid recipe {a.recipe or '(defaults)'}:\n{e}") from None
    run_compact(r, stage=a.stage, export=a.export, version=a.version)


def _cv_group() -> click.Group:
    from .compact.select import cv

    return cv


distill.add_command(_cv_group(), "cv")


@click.group()
def main() -> None:
    """Stand-alone entry (``python -m training.cli``) besides the ``mulcot`` console script."""


main.add_command(distill)
main.add_command(data)

if __name__ == "__main__":  # pragma: no cover
    main()
