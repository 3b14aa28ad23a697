"""``mulcot distill ...`` and ``mulcot data ...``: click groups, registered under the
``mulcot.commands`` entry-point group (pyproject) and discovered by the ``mulcot`` console script.
Also runnable alone: ``python -m training.cli distill ...``.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import click


def _console():
    from rich.console import Console

    return Console()


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    from model.loading import parse_options

    try:
        return parse_options(pairs)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--option") from None


# ------------------------------------------------------------------------------ data


@click.group(help="Datasets in the JSONL format of ../shared/data.")
def data() -> None:
    pass


@data.command("stats", help="Print a dataset card: counts, label balance, image sizes, chain parse rate.")
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON instead of a table.")
@click.option("--no-images", is_flag=True, help="Do not open image files (faster).")
def data_stats(file: str, as_json: bool, no_images: bool) -> None:
    from .data import dataset_stats, print_dataset_card, resolve_data_path

    path = resolve_data_path(file)
    stats = dataset_stats(path, image_sizes=not no_images)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        print_dataset_card(stats, title=str(path), console=_console())


# ------------------------------------------------------------------------------ distill


@click.group(help="Chain-of-thought distillation: teacher -> assistant -> student (MulCoT-RD), and evaluation.")
def distill() -> None:
    pass


def _recipe_stage(recipe: str, stage: str, overrides: tuple[str, ...]) -> None:
    from .mulcot.recipe import load_recipe
    from .mulcot.run import run_recipe

    r = load_recipe(recipe, list(overrides))
    run_recipe(r, stages=[stage], console=_console())


@distill.command("teacher", help="Ask a teacher MLLM for chains (label-free, then label-guided retries); "
                                 "appends to OUT (resumable).")
@click.option("--recipe", type=click.Path(exists=True), help="Run this stage of a recipe (other options ignored).")
@click.option("--set", "overrides", multiple=True, help="Recipe override key.path=value.")
@click.option("--data", "data_file", help="Labelled posts (JSONL or split name).")
@click.option("--out", "out_file", type=click.Path(), help="Output JSONL (appended; done ids skipped).")
@click.option("--backend", type=click.Choice(["endpoint", "hf"]), default="endpoint", show_default=True)
@click.option("--model", "model_name", default="Qwen/Qwen2.5-VL-72B-Instruct", show_default=True,
              help="Served model name (endpoint) or hf model dir/id.")
@click.option("--base-url", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True)
@click.option("--max-guided", default=2, show_default=True, help="Label-guided retries per wrong post.")
@click.option("--concurrency", default=8, show_default=True, help="Requests in flight.")
@click.option("--rps", type=float, default=None, help="Request-rate limit per second.")
@click.option("--max-retries", default=4, show_default=True, help="Retries per request (429/5xx/transport).")
@click.option("--max-tokens", default=768, show_default=True)
@click.option("--price-in", type=float, default=0.0, help="USD per million prompt tokens.")
@click.option("--price-out", type=float, default=0.0, help="USD per million completion tokens.")
@click.option("--limit", type=int, default=None, help="Only the first N posts.")
@click.option("--all", "include_chained", is_flag=True, help="Also posts that already have a teacher_cot.")
def teacher_cmd(recipe, overrides, data_file, out_file, backend, model_name, base_url, api_key_env, max_guided,
                concurrency, rps, max_retries, max_tokens, price_in, price_out, limit, include_chained) -> None:
    if recipe:
        return _recipe_stage(recipe, "teacher", overrides)
    if not data_file or not out_file:
        raise click.UsageError("--data and --out are required without --recipe")
    from .data import load_examples, resolve_data_path
    from .mulcot.recipe import TeacherConfig
    from .mulcot.run import teacher_factory
    from .mulcot.teacher import run_teacher

    exs = [ex for ex in load_examples(resolve_data_path(data_file), limit=limit)
           if ex.label is not None and (include_chained or not ex.teacher_cot)]
    if backend == "endpoint" and not base_url:
        raise click.UsageError("--base-url is required for the endpoint backend")
    cfg = TeacherConfig(backend=backend, model=model_name, base_url=base_url, api_key_env=api_key_env,
                        max_guided=max_guided, max_concurrency=concurrency, requests_per_s=rps,
                        max_retries=max_retries, max_tokens=max_tokens, price_prompt_per_mtok=price_in,
                        price_completion_per_mtok=price_out)
    errors: list[str] = []
    factory = _recording(teacher_factory(cfg, out_dir=Path(out_file).parent), errors)
    summary = run_teacher(exs, factory, out_file, max_guided=max_guided, progress=True)
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


def _train_options(f):
    """The optimisation options of the assistant and student verbs: defaults and help from
    the recipe's ``train`` block (:class:`training.mulcot.trainer.TrainConfig`), the one source."""
    from .mulcot.trainer import TrainConfig
    from .mulcot.vlm import LoraSettings

    fields = TrainConfig.model_fields
    lora = LoraSettings.model_fields

    def opt(name: str, **kw: Any):
        return click.option("--" + name.replace("_", "-"), default=fields[name].default, show_default=True,
                            help=fields[name].description, **kw)

    opts = [
        opt("epochs"),
        opt("lr"),
        opt("batch_size"),
        opt("grad_accum"),
        opt("max_steps", type=int),
        opt("image_size", type=int),
        click.option("--lora-r", default=lora["r"].default, show_default=True, help=lora["r"].description),
        click.option("--lora-alpha", default=lora["alpha"].default, show_default=True, help=lora["alpha"].description),
        click.option("--modules-to-save", multiple=True, help="Modules trained fully (e.g. lm_head for tiny models)."),
        click.option("--limit", type=int, default=None, help="Only the first N train/dev rows."),
        click.option("--seed", default=0, show_default=True),
        click.option("--cpu", is_flag=True, help="Force CPU."),
        opt("mixed_precision", type=click.Choice(["no", "bf16", "fp16"])),
        click.option("--recipe", type=click.Path(exists=True), help="Run this stage of a recipe instead."),
        click.option("--set", "overrides", multiple=True, help="Recipe override key.path=value."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _lora(kw: dict) -> Any:
    from .mulcot.vlm import LoraSettings

    return LoraSettings(r=kw["lora_r"], alpha=kw["lora_alpha"], modules_to_save=list(kw["modules_to_save"]) or None)


def _settings(kw: dict) -> Any:
    from .mulcot.trainer import TrainSettings

    return TrainSettings(epochs=kw["epochs"], lr=kw["lr"], batch_size=kw["batch_size"], grad_accum=kw["grad_accum"],
                         max_steps=kw["max_steps"], image_size=kw["image_size"], seed=kw["seed"], cpu=kw["cpu"],
                         mixed_precision=kw["mixed_precision"], log_every=1 if (kw["max_steps"] or 99) < 20 else 10)


@distill.command("assistant", help="Multi-task LoRA training of the assistant: CE(chain) + CE(label).")
@click.option("--model", "model_name", help="Base model dir or hub id (tiny:<family> for a tiny test model).")
@click.option("--train", "train_file", help="Training posts with chains (JSONL or split name).")
@click.option("--dev", "dev_file", help="Dev posts for selection.")
@click.option("--out", "out_dir", type=click.Path(), help="Output folder.")
@_train_options
def assistant_cmd(model_name, train_file, dev_file, out_dir, **kw) -> None:
    if kw["recipe"]:
        return _recipe_stage(kw["recipe"], "assistant", kw["overrides"])
    if not (model_name and train_file and dev_file and out_dir):
        raise click.UsageError("--model, --train, --dev and --out are required without --recipe")
    from .data import load_examples, resolve_data_path
    from .mulcot.assistant import train_assistant
    from .mulcot.recipe import resolve_model

    s = train_assistant(model=resolve_model(model_name, Path(out_dir), kw["seed"]),
                        train=load_examples(resolve_data_path(train_file), limit=kw["limit"]),
                        dev=load_examples(resolve_data_path(dev_file), limit=kw["limit"]), out_dir=out_dir,
                        settings=_settings(kw), lora=_lora(kw),
                        card={"data": {"train": str(resolve_data_path(train_file)),
                                       "dev": str(resolve_data_path(dev_file)), "limit": kw["limit"]}})
    click.echo(json.dumps({"best": s["best"], "steps": s["steps"], "processes": s["processes"]}, indent=2))


@distill.command("augment", help="Sample chains from the trained assistant for label-only posts; keep matches.")
@click.option("--assistant", "assistant_spec", help="Assistant: adapter dir (e.g. RUN/assistant/best) or hf spec.")
@click.option("--data", "data_file", help="Posts to augment (rows without teacher_cot are used).")
@click.option("--out", "out_file", type=click.Path(), help="Output JSONL (appended; resumable).")
@click.option("--samples", default=2, show_default=True, help="Chains sampled per post until one matches gold.")
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--max-new-tokens", default=384, show_default=True)
@click.option("--image-size", type=int, default=None)
@click.option("--limit", type=int, default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--merge-with", multiple=True, help="Teacher chain files to merge with (written to --merged).")
@click.option("--merged", type=click.Path(), help="Write DATA with chains from --merge-with files and OUT here.")
@click.option("--recipe", type=click.Path(exists=True), help="Run this stage of a recipe instead.")
@click.option("--set", "overrides", multiple=True)
def augment_cmd(assistant_spec, data_file, out_file, samples, temperature, max_new_tokens, image_size, limit, seed,
                merge_with, merged, recipe, overrides) -> None:
    if recipe:
        return _recipe_stage(recipe, "augment", overrides)
    if not (assistant_spec and data_file and out_file):
        raise click.UsageError("--assistant, --data and --out are required without --recipe")
    from .data import load_examples, resolve_data_path
    from .mulcot.augment import augment, merge_chains

    path = resolve_data_path(data_file)
    s = augment(load_examples(path, limit=limit), assistant_spec, out_file, samples=samples, temperature=temperature,
                max_new_tokens=max_new_tokens, image_size=image_size, seed=seed, progress=True)
    if merged:
        s["merged"] = merge_chains([*merge_with, out_file], merged, base=path)
    click.echo(json.dumps(s, indent=2))


@distill.command("student", help="Joint chain + label training of the student, distilled from the frozen assistant: "
                                 "(1-lam)*CE + lam*T^2*KL on answer tokens, per task.")
@click.option("--model", "model_name", help="Student base model (must share the assistant's tokenizer).")
@click.option("--assistant", "assistant_spec", help="Trained assistant (adapter dir, or base+adapter).")
@click.option("--train", "train_file", help="Training posts (with chains for the chain task).")
@click.option("--dev", "dev_file", help="Dev posts for selection.")
@click.option("--out", "out_dir", type=click.Path(), help="Output folder.")
@click.option("--lam", default=0.3, show_default=True, help="KL weight lambda.")
@click.option("--T", "temperature", default=2.0, show_default=True, help="Distillation temperature T.")
@_train_options
def student_cmd(model_name, assistant_spec, train_file, dev_file, out_dir, lam, temperature, **kw) -> None:
    if kw["recipe"]:
        return _recipe_stage(kw["recipe"], "student", kw["overrides"])
    if not (model_name and assistant_spec and train_file and dev_file and out_dir):
        raise click.UsageError("--model, --assistant, --train, --dev and --out are required without --recipe")
    from .data import load_examples, resolve_data_path
    from .mulcot.recipe import resolve_model
    from .mulcot.student import train_student

    s = train_student(model=resolve_model(model_name, Path(out_dir), kw["seed"]), assistant=assistant_spec,
                      train=load_examples(resolve_data_path(train_file), limit=kw["limit"]),
                      dev=load_examples(resolve_data_path(dev_file), limit=kw["limit"]), out_dir=out_dir,
                      settings=_settings(kw), lam=lam, T=temperature, lora=_lora(kw),
                      card={"data": {"train": str(resolve_data_path(train_file)),
                                     "dev": str(resolve_data_path(dev_file)), "limit": kw["limit"]}})
    click.echo(json.dumps({"best": s["best"], "steps": s["steps"], "processes": s["processes"]}, indent=2))


@distill.command("evaluate", help="Evaluate a student (SPEC as load_student takes: default, noop, hf:<dir>, ...) "
                                  "on a labelled JSONL file; prints a table, writes report.json, predictions.jsonl, plots.")
@click.option("--student", "spec", required=True, help="Student spec, e.g. default, noop, hf:<dir>[+<adapter>].")
@click.option("--data", "data_file", required=True, help="Labelled posts (JSONL or split name, e.g. t15/test).")
@click.option("--out", "out_dir", type=click.Path(), default=None, help="Write report.json, predictions.jsonl, PNGs here.")
@click.option("--limit", type=int, default=None, help="Only the first N posts.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--no-chain", is_flag=True, help="Label only (no chain generation or chain metrics).")
@click.option("--no-embeddings", is_flag=True, help="Skip the MiniLM embedding cosine.")
@click.option("--train-log", type=click.Path(exists=True), default=None, help="train_log.jsonl to plot loss curves from.")
@click.option("--image-max-side", type=int, default=None, help="Downscale images before the student sees them.")
@click.option("--option", "options", multiple=True, help="load_student option key=value (e.g. image_size=280).")
@click.option("--grounding", is_flag=True, help="Also the grounding metrics: posts with images rerun with another "
                                                 "post's image and with none (about 3x the work; training/grounding.py).")
@click.option("--grounding-limit", type=int, default=None, help="Grounding on the first N posts with images only.")
def evaluate_cmd(spec, data_file, out_dir, limit, batch_size, no_chain, no_embeddings, train_log, image_max_side,
                 options, grounding, grounding_limit) -> None:
    from model import load_student

    from .data import load_examples, resolve_data_path
    from .evaluate import evaluate

    try:
        student = load_student(spec, **_parse_options(options))
        exs = load_examples(resolve_data_path(data_file), limit=limit)
    except (OSError, ValueError) as e:  # missing weights/data, bad spec (SpecError is a ValueError)
        raise click.ClickException(str(e)) from None
    evaluate(student, exs, chain=not no_chain, batch_size=batch_size, out_dir=out_dir, embeddings=not no_embeddings,
             train_log=train_log, image_max_side=image_max_side, progress=True, console=_console(),
             grounding=grounding, grounding_limit=grounding_limit)
    if out_dir:
        click.echo(f"wrote {Path(out_dir) / 'report.json'}")


@distill.command("cv", add_help_option=False, context_settings={"ignore_unknown_options": True},
                 help="The compact student's model selection by stratified k-fold CV over train + dev "
                      "(python -m training.compact.select): features | run | finetune | export DATASET "
                      "[--k --seed --candidate --out --route]; `mulcot distill cv -h` for its options.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cv_cmd(args) -> None:
    from .compact.select import main as cv_main

    cv_main(list(args), prog="mulcot distill cv")


@distill.command("run", help="Run every stage of a recipe (YAML/TOML): teacher, assistant, augment, student, evaluate.")
@click.argument("recipe", type=click.Path(exists=True), required=False)
@click.option("--dry-run", is_flag=True, help="Only check data and config (seconds); train nothing.")
@click.option("--stage", "stages", multiple=True,
              type=click.Choice(["teacher", "assistant", "augment", "student", "evaluate"]),
              help="Run only these stages (repeatable).")
@click.option("--set", "overrides", multiple=True, help="Override a recipe field: key.path=value (YAML value).")
@click.option("--schema", is_flag=True, help="Print every recipe field with its type, default and description.")
def run_cmd(recipe, dry_run, stages, overrides, schema) -> None:
    from .mulcot.recipe import load_recipe, print_schema
    from .mulcot.run import run_recipe

    if schema:
        print_schema(_console())
        return
    if not recipe:
        raise click.UsageError("RECIPE is required (or --schema)")
    try:
        r = load_recipe(recipe, list(overrides))
    except Exception as e:  # pydantic ValidationError, YAML errors
        raise click.ClickException(f"invalid recipe {recipe}:\n{e}") from None
    try:
        run_recipe(r, dry_run=dry_run, stages=list(stages) or None, console=_console())
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if dry_run:
        click.echo("dry run OK")
    else:
        click.echo(f"run finished: {Path(r.out_dir) / 'run_summary.json'}")


# ------------------------------------------------------------------------------ compact


def _click_type(annotation: Any) -> type | None:
    """The click type of a scalar recipe field (``int``, ``float``, ``str``, ``bool``, optional or
    not); None for lists and mappings, which ``--set key=value`` sets."""
    if annotation in (int, float, str, bool):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, str):
            return args[0]
    return None


def recipe_options(model: Any):
    """Decorator: one typed option per scalar field of the pydantic recipe ``model``, its
    description as help. An option left out keeps the value of the recipe file (or the default);
    the command gets the options as keyword arguments named like the fields."""

    def deco(f):
        for name, info in reversed(list(model.model_fields.items())):
            typ = _click_type(info.annotation)
            if typ is None:
                continue
            flag = "--" + name.replace("_", "-")
            default = info.get_default(call_default_factory=True)
            help_ = f"{info.description} [recipe default: {default}]"
            if typ is bool:
                f = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_)(f)
            else:
                f = click.option(flag, name, type=typ, default=None, help=help_)(f)
        return f

    return deco


def _compact_recipe_model():
    from .compact.recipe import CompactRecipe

    return CompactRecipe


@distill.command(
    "compact",
    help="Train the compact CPU student (MiniLM+EfficientNet classifier, SmolLM2 chain writer) from a recipe "
    "such as training/recipes/compact.toml. Options set single recipe fields over the file; --set key=value "
    "sets any field (lists and mappings too). --export DIR writes a loadable student (compact:DIR; "
    "model/weights/default is the shipped `default`).",
)
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--stage", type=click.Choice(["classifier", "specialise", "explainer", "all"]), default="all",
              show_default=True, help="Run only this stage (the run folder keeps the others' files).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="After training, write a loadable student to this directory.")
@click.option("--version", default=None, help="Version written into the exported student.json (default: today).")
@click.option("--set", "overrides", multiple=True, help="Override a recipe field: key=value (YAML value).")
@click.option("--schema", is_flag=True, help="Print every recipe field with its type, default and description.")
@recipe_options(_compact_recipe_model())
def compact_cmd(recipe, stage, export_dir, version, overrides, schema, **fields) -> None:
    from .compact.recipe import CompactRecipe, load_compact_recipe
    from .compact.run import run_compact
    from .recipe import print_schema

    if schema:
        print_schema(CompactRecipe, _console(), title="compact recipe fields (TOML or YAML)")
        return
    try:
        r = load_compact_recipe(recipe, list(overrides), {k: v for k, v in fields.items() if v is not None})
    except Exception as e:  # pydantic ValidationError, TOML/YAML errors, bad --set
        raise click.ClickException(f"invalid recipe {recipe or '(defaults)'}:\n{e}") from None
    run_compact(r, stage=stage, export=export_dir, version=version)


@click.group()
def main() -> None:
    """Stand-alone entry (``python -m training.cli``) besides the ``mulcot`` console script."""


main.add_command(distill)
main.add_command(data)

if __name__ == "__main__":  # pragma: no cover
    main()
