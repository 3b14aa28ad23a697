"""Running a MulCoT-RD recipe: the stages in order - teacher, assistant, augment, student,
evaluate - each writing under ``out_dir/<stage>/``. A finished stage (its ``model_card.json`` or
output exists) is skipped on a rerun, and an interrupted training stage resumes from its last
epoch. :func:`run_recipe` only orders the stages; each ``*_stage`` function runs one.

Under ``accelerate launch`` every process runs this; only the main process asks the teacher,
samples chains, evaluates and writes the shared files, and the others wait for it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Example, load_examples, resolve_data_path
from .recipe import Recipe, TeacherConfig, check_recipe, resolve_model
from .trainer import TrainConfig, TrainSettings

STAGES = ("teacher", "assistant", "augment", "student", "evaluate")

#: The metrics of each evaluated split that the run summary and the student's model card keep.
SUMMARY_METRICS = ("n", "accuracy", "weighted_f1", "macro_f1", "chain_parse_rate", "label_chain_agreement",
                   "bleu4", "rouge_l", "posts_per_s")


def teacher_factory(t: TeacherConfig, *, out_dir: Path, seed: int = 0) -> Callable[[], Any]:
    """A function that builds the teacher backend ``t`` describes (``run_teacher`` calls it)."""
    from .teacher import EndpointTeacher, HFTeacher

    if t.backend == "endpoint":
        def endpoint() -> EndpointTeacher:
            return EndpointTeacher(t.base_url, t.model, api_key=os.environ.get(t.api_key_env),
                                   max_concurrency=t.max_concurrency, requests_per_s=t.requests_per_s,
                                   max_retries=t.max_retries, max_tokens=t.max_tokens, temperature=t.temperature,
                                   image_max_side=t.image_max_side, price_prompt_per_mtok=t.price_prompt_per_mtok,
                                   price_completion_per_mtok=t.price_completion_per_mtok)

        return endpoint
    spec = resolve_model(t.model, out_dir, seed)

    def hf() -> HFTeacher:
        return HFTeacher(spec, max_new_tokens=t.max_tokens, batch_size=t.batch_size, seed=seed)

    return hf


def train_settings(train: TrainConfig, seed: int, progress: bool = True) -> TrainSettings:
    return TrainSettings(**train.model_dump(), seed=seed, progress=progress)


@dataclass
class Run:
    """What the stages of one run share."""

    recipe: Recipe
    acc: Any
    stages: list[str]
    progress: bool = True
    console: Any = None
    card: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.recipe.out_dir)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def wants(self, stage: str) -> bool:
        return stage in self.stages and getattr(self.recipe, stage).enabled

    def log(self, msg: str) -> None:
        if self.main:
            (self.console.print if self.console is not None else print)(msg)

    def write_json(self, path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str))

    def examples(self, spec: str | Path, *, dev: bool = False) -> list[Example]:
        d = self.recipe.data
        return load_examples(resolve_data_path(spec), limit=(d.dev_limit or d.limit) if dev else d.limit)

    # files the stages hand to each other
    @property
    def teacher_chains(self) -> Path:
        return self.out / "teacher" / "chains.jsonl"

    @property
    def augmented(self) -> Path:
        return self.out / "augment" / "augmented.jsonl"


def teacher_stage(run: Run) -> None:
    """Chains from the teacher for training posts that have none (appended; resumable)."""
    from .teacher import run_teacher

    r, d = run.recipe, run.recipe.data
    need = [ex for ex in run.examples(d.train) if not ex.teacher_cot and ex.label]
    need = need[: r.teacher.limit] if r.teacher.limit else need
    run.log(f"[teacher] {len(need)} posts without chains")
    s = run_teacher(need, teacher_factory(r.teacher, out_dir=run.out, seed=r.seed), run.teacher_chains,
                    max_guided=r.teacher.max_guided, image_max_side=d.image_max_side, progress=run.progress)
    run.summary["stages"]["teacher"] = s
    run.write_json(run.out / "teacher" / "summary.json", s)


def merged_train(run: Run, chain_files: list[Path], name: str, extra: Path | None = None) -> list[Example]:
    """The training posts with the chains of ``chain_files`` (written to ``data/<name>``), plus
    the posts of ``extra`` that are not training posts (label-only posts given chains)."""
    from .augment import merge_chains

    d = run.recipe.data
    path = run.out / "data" / name
    if run.main:
        merge_chains(chain_files, path, base=resolve_data_path(d.train))
    run.acc.wait_for_everyone()
    train = load_examples(path, limit=d.limit)
    if extra is not None and extra.exists():
        ids = {ex.id for ex in train}
        train += [ex for ex in load_examples(extra) if ex.id not in ids]
    return train


def _done_already(run: Run, stage: str) -> bool:
    """A training stage whose model card exists finished in an earlier run: skip it."""
    if (run.out / stage / "model_card.json").exists():
        run.log(f"[{stage}] done already (model_card.json exists): skipped")
        return True
    return False


def assistant_stage(run: Run, train: list[Example], dev: list[Example]) -> None:
    from .assistant import train_assistant

    r, a = run.recipe, run.recipe.assistant
    if _done_already(run, "assistant"):
        return
    s = train_assistant(model=resolve_model(a.model, run.out, r.seed), train=train, dev=dev,
                        out_dir=run.out / "assistant", settings=train_settings(a.train, r.seed, run.progress),
                        lora=a.lora, dtype=a.dtype, card=run.card, accelerator=run.acc)
    run.summary["stages"]["assistant"] = {"best": s["best"], "steps": s["steps"]}


def augment_stage(run: Run, train: list[Example]) -> None:
    """Chains sampled from the trained assistant for posts without one (kept when they match gold)."""
    from .augment import augment

    r, d, g = run.recipe, run.recipe.data, run.recipe.augment
    cands = [ex for ex in train if not ex.teacher_cot]
    if d.label_only:
        cands += run.examples(d.label_only)
    cands = cands[: g.limit] if g.limit else cands
    s = augment(cands, str(run.out / "assistant" / "best"), run.augmented, samples=g.samples,
                temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                image_size=r.assistant.train.image_size, seed=r.seed, batch_size=g.batch_size, progress=run.progress)
    run.summary["stages"]["augment"] = s
    run.write_json(run.out / "augment" / "summary.json", s)


def label_only_chains(run: Run) -> Path:
    """The kept chains of label-only posts (not training posts), written to ``data/``."""
    from .augment import merge_chains

    path = run.out / "data" / "augmented_label_only.jsonl"
    if run.main and run.recipe.data.label_only and run.augmented.exists():
        merge_chains([run.augmented], path)
    run.acc.wait_for_everyone()
    return path


def student_stage(run: Run, train: list[Example], dev: list[Example]) -> None:
    from .student import train_student

    r, st = run.recipe, run.recipe.student
    if _done_already(run, "student"):
        return
    s = train_student(model=resolve_model(st.model, run.out, r.seed), assistant=str(run.out / "assistant" / "best"),
                      train=train, dev=dev, out_dir=run.out / "student",
                      settings=train_settings(st.train, r.seed, run.progress), lam=st.lam, T=st.T,
                      lora=st.lora, dtype=st.dtype, card=run.card, accelerator=run.acc)
    run.summary["stages"]["student"] = {"best": s["best"], "steps": s["steps"]}


def evaluate_stage(run: Run) -> dict:
    """The trained student on each evaluation split; the summary metrics per split, also
    recorded in the student's model card."""
    from model import load_student

    from ..evaluate import evaluate

    r, ev = run.recipe, run.recipe.evaluate
    s_dir = run.out / "student"
    opts = {"image_size": r.student.train.image_size, **ev.options}
    student = load_student(f"hf:{s_dir / 'best'}", **opts)
    reports = {}
    for split in ev.splits or [r.data.test or r.data.dev]:
        name = Path(split).stem if Path(split).exists() else split.replace("/", "_")
        rep = evaluate(student, run.examples(split, dev=True), chain=ev.chain, batch_size=ev.batch_size,
                       out_dir=run.out / "eval" / name, embeddings=ev.embeddings,
                       train_log=s_dir / "train_log.jsonl", progress=run.progress, console=run.console)
        reports[split] = {k: rep.get(k) for k in SUMMARY_METRICS}
    run.summary["stages"]["evaluate"] = reports
    card_path = s_dir / "model_card.json"
    if card_path.exists():
        mc = json.loads(card_path.read_text())
        mc.setdefault("metrics", {})["evaluation"] = reports
        run.write_json(card_path, mc)
    return reports


def run_recipe(recipe: Recipe, *, dry_run: bool = False, stages: list[str] | None = None,
               console: Any = None, progress: bool = True) -> dict:
    """Run all (or the named) stages of ``recipe``; returns a summary dict (also written to
    ``out_dir/run_summary.json``)."""
    from .trainer import seed_everything

    info = check_recipe(recipe, console=console)
    if dry_run:
        return {"dry_run": True, **info}
    from accelerate import Accelerator

    acc = Accelerator(cpu=recipe.student.train.cpu or recipe.assistant.train.cpu,
                      gradient_accumulation_steps=recipe.assistant.train.grad_accum,
                      mixed_precision=recipe.assistant.train.mixed_precision)
    run = Run(recipe, acc, list(stages or STAGES), progress, console,
              card={"recipe": recipe.model_dump(), "data": info["datasets"]},
              summary={"recipe": recipe.model_dump(), "stages": {}})
    run.out.mkdir(parents=True, exist_ok=True)
    seed_everything(recipe.seed)
    dev = run.examples(recipe.data.dev, dev=True)
    if run.wants("teacher"):
        if run.main:
            teacher_stage(run)
        acc.wait_for_everyone()
    train = merged_train(run, [run.teacher_chains], "train_chains.jsonl")
    if run.wants("assistant"):
        assistant_stage(run, train, dev)
    if run.wants("augment") and (run.out / "assistant" / "best").exists():
        if run.main:
            augment_stage(run, train)
        acc.wait_for_everyone()
    student_train = merged_train(run, [run.teacher_chains, run.augmented], "student_train.jsonl",
                                 extra=label_only_chains(run))
    if run.wants("student"):
        student_stage(run, student_train, dev)
    if run.wants("evaluate") and (run.out / "student" / "best").exists() and run.main:
        evaluate_stage(run)
    acc.wait_for_everyone()
    if run.main:
        run.summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run.write_json(run.out / "run_summary.json", run.summary)
    return run.summary
