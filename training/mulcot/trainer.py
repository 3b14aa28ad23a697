"""The training loop shared by the assistant and student stages (accelerate, LoRA, resumable).

``fit`` runs epochs over the training examples; each step builds two batches from the same
posts - the chain task (reasoning prompt -> chain, posts that have one) and the label task
(label prompt -> label word) - and asks ``loss_fn(model, batches)`` for the loss. After each
epoch it scores the dev split's label task, steps a reduce-on-plateau scheduler on dev accuracy,
keeps the best epoch (dev accuracy, ties by F1) and writes a resumable checkpoint.

Layout of ``out_dir``::

    best/               adapter_model.safetensors + adapter_config.json (+ processor files):
                        loadable as ``load_student("hf:<out_dir>/best")``
    last/               the latest epoch's adapter + optimizer/scheduler state + trainer_state.json
    train_log.jsonl     one row per logged step (kind=train) and per epoch (kind=dev)
    model_card.json     data, recipe, metrics, git commit, versions

Multi-GPU / multi-process: everything goes through ``accelerate.Accelerator`` (DDP; run with
``accelerate launch``); only the main process writes files. Every process evaluates the same dev
set, so all make the same selection decisions.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..data import Example
from ..recipe import StrictModel, git_commit, versions
from .vlm import chain_item, collate_items, dev_metrics, label_item


class TrainConfig(StrictModel):
    """Optimisation settings: the ``train`` block of a recipe, and the defaults of the CLI verbs."""

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


class TrainSettings(TrainConfig):
    """:class:`TrainConfig` plus what the run adds."""

    image_max_side: int | None = Field(None, description="Downscale images to this longer side when loading "
                                                         "(None: as served, see model.backends.hf.inputs).")
    seed: int = Field(0, description="Seed for Python, NumPy, torch and data order.")
    progress: bool = Field(True, description="Show a progress bar.")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_batches(processor: Any, examples: Sequence[Example], *, family: str, cfg: TrainSettings,
                 chain_task: bool = True, label_task: bool = True) -> dict:
    """``{"chain": batch | None, "label": batch | None}`` for one step's examples."""
    posts = [ex.post(max_side=cfg.image_max_side) for ex in examples]
    chain_items = [it for ex, p in zip(examples, posts) if (it := chain_item(ex, p)) is not None] if chain_task else []
    label_items = [label_item(ex, p) for ex, p in zip(examples, posts) if ex.label is not None] if label_task else []
    kw = dict(family=family, image_size=cfg.image_size)
    return {
        "chain": collate_items(processor, chain_items, max_answer_tokens=cfg.max_answer_tokens, **kw) if chain_items else None,
        "label": collate_items(processor, label_items, **kw) if label_items else None,
    }


def _save_adapter(model: Any, processor: Any, path: Path) -> None:
    from model.backends.hf.processor import save_processor

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    try:
        save_processor(processor, path)
    except Exception:  # the base model's processor is used when this fails
        pass


def _resume(last: Path, acc: Any, model: Any, optimizer: Any, scheduler: Any, stage: str) -> dict:
    """The trainer state of an interrupted run (weights, optimizer and scheduler restored from
    ``last/``), or a fresh one."""
    import torch

    if not (last / "trainer_state.json").exists():
        return {"epoch": 0, "step": 0, "best": None, "history": []}
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((last / "trainer_state.json").read_text())
    set_peft_model_state_dict(acc.unwrap_model(model), load_file(str(last / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(last / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(last / "scheduler.pt", map_location="cpu", weights_only=False))
    if acc.is_main_process:
        print(f"[{stage}] resuming after epoch {state['epoch']} (step {state['step']})")
    return state


def _select(state: dict, epoch: int, metrics: dict, stage: str) -> bool:
    """Record the epoch's dev metrics in ``state``; True when it is the best so far (dev
    accuracy, ties by F1)."""
    acc_dev = metrics.get("dev_accuracy")
    state["epoch"] = epoch
    state["history"].append({"kind": "dev", "stage": stage, "epoch": epoch, "step": state["step"], **metrics})
    key = (acc_dev if acc_dev is not None else -1.0, metrics.get("dev_f1") or -1.0)
    improved = state["best"] is None or key > tuple(state["best"]["key"])
    if improved:
        state["best"] = {"epoch": epoch, "key": list(key), **metrics}
    return improved


def _save_epoch(out: Path, state: dict, improved: bool, model: Any, processor: Any, optimizer: Any,
                scheduler: Any) -> None:
    """The dev row in the log, the resumable checkpoint in ``last/``, and ``best/`` when improved."""
    import torch

    last = out / "last"
    with (out / "train_log.jsonl").open("a") as f:
        f.write(json.dumps(state["history"][-1]) + "\n")
    _save_adapter(model, processor, last)
    torch.save(optimizer.state_dict(), last / "optimizer.pt")
    torch.save(scheduler.state_dict(), last / "scheduler.pt")
    (last / "trainer_state.json").write_text(json.dumps(state, indent=1))
    if improved:
        if (out / "best").exists():
            shutil.rmtree(out / "best")
        _save_adapter(model, processor, out / "best")


def _write_model_card(out: Path, stage: str, summary: dict, state: dict, cfg: TrainSettings,
                      card: dict | None) -> None:
    model_card = {
        "stage": stage,
        **(card or {}),
        "metrics": {"best": state["best"], "history": state["history"]},
        "training": {k: v for k, v in summary.items() if k not in ("best", "history")},
        "settings": cfg.model_dump(),
        "git_commit": git_commit(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_with": f"load_student('hf:{(out / 'best').resolve()}')",
    }
    (out / "model_card.json").write_text(json.dumps(model_card, indent=2, default=str))


class _LossLog:
    """Running means of the loss terms, written to ``train_log.jsonl`` every ``log_every`` steps."""

    def __init__(self, path: Path, stage: str, write: bool):
        self.path, self.stage, self.write = path, stage, write
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, terms: dict) -> None:
        for k, v in terms.items():
            if v is not None:
                self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if hasattr(v, "detach") else v)
        self.n += 1

    def flush(self, epoch: int, step: int, lr: float) -> dict:
        row = {"kind": "train", "stage": self.stage, "epoch": epoch, "step": step, "lr": lr,
               **{k: v / max(self.n, 1) for k, v in self.sums.items()}}
        if self.write:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.sums, self.n = {}, 0
        return row


def _prepare(model: Any, processor: Any, family: str, train_examples: list[Example], cfg: TrainSettings, acc: Any,
             chain_task: bool, label_task: bool) -> tuple[Any, Any, Any, Any]:
    """The model, AdamW optimizer and shuffled loader prepared by ``acc``, and the
    reduce-on-plateau scheduler on dev accuracy."""
    import torch
    from torch.utils.data import DataLoader

    def collate(exs: list[Example]) -> dict:
        return make_batches(processor, exs, family=family, cfg=cfg, chain_task=chain_task, label_task=label_task)

    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_examples, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=g,
                        num_workers=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                           patience=cfg.plateau_patience)
    model.train()
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    return model, optimizer, loader, scheduler


def _train_steps(acc: Any, model: Any, optimizer: Any, loader: Any, loss_fn: Callable[[Any, dict], dict],
                 state: dict, losses: _LossLog, bar: Any, cfg: TrainSettings, epoch: int, total: int) -> None:
    """One epoch's optimizer steps (until ``cfg.max_steps``), the loss logged every ``cfg.log_every``."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    for batches in loader:
        with acc.accumulate(model):
            terms = loss_fn(model, batches)
            acc.backward(terms["loss"])
            optimizer.step()
            optimizer.zero_grad()
        losses.add(terms)
        if acc.sync_gradients:
            state["step"] += 1
            bar.update(1)
            if state["step"] % cfg.log_every == 0 or state["step"] == total:
                row = losses.flush(epoch, state["step"], optimizer.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break


def _end_epoch(acc: Any, model: Any, processor: Any, family: str, dev_examples: Sequence[Example],
               cfg: TrainSettings, optimizer: Any, scheduler: Any, state: dict, epoch: int, stage: str,
               out: Path) -> None:
    """Dev selection, the scheduler step and the checkpoints after ``epoch``."""
    unwrapped = acc.unwrap_model(model)
    metrics = dev_metrics(unwrapped, processor, list(dev_examples), family=family, image_size=cfg.image_size,
                          batch_size=cfg.eval_batch_size, image_max_side=cfg.image_max_side) if dev_examples else {}
    if metrics.get("dev_accuracy") is not None:
        scheduler.step(metrics["dev_accuracy"])
    improved = _select(state, epoch, metrics, stage)
    if acc.is_main_process:
        _save_epoch(out, state, improved, unwrapped, processor, optimizer, scheduler)
        print(f"[{stage}] epoch {epoch}: {json.dumps(metrics)}{' (best)' if improved else ''}")
    acc.wait_for_everyone()


def fit(
    *,
    stage: str,
    model: Any,
    processor: Any,
    family: str,
    train_examples: Sequence[Example],
    dev_examples: Sequence[Example],
    loss_fn: Callable[[Any, dict], dict],
    out_dir: str | Path,
    cfg: TrainSettings,
    card: dict | None = None,
    chain_task: bool = True,
    label_task: bool = True,
    extra_modules: Sequence[Any] = (),
    accelerator: Any = None,
) -> dict:
    """Train ``model`` (a peft model) and return the summary (also in ``model_card.json``)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    out = Path(out_dir)
    acc = accelerator or Accelerator(cpu=cfg.cpu, gradient_accumulation_steps=cfg.grad_accum,
                                     mixed_precision=cfg.mixed_precision)
    acc.gradient_accumulation_steps = cfg.grad_accum  # a shared Accelerator (run_recipe) serves both stages
    seed_everything(cfg.seed)
    train_examples = list(train_examples)
    if not train_examples:
        raise ValueError(f"{stage}: no training examples")
    model, optimizer, loader, scheduler = _prepare(model, processor, family, train_examples, cfg, acc, chain_task,
                                                   label_task)
    state = _resume(out / "last", acc, model, optimizer, scheduler, stage)
    total = cfg.epochs * math.ceil(len(loader) / cfg.grad_accum)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    losses = _LossLog(out / "train_log.jsonl", stage, acc.is_main_process)
    bar = tqdm(total=total, initial=min(state["step"], total), desc=stage, unit="step",
               disable=not (cfg.progress and acc.is_main_process))
    t0 = time.perf_counter()
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
        _train_steps(acc, model, optimizer, loader, loss_fn, state, losses, bar, cfg, epoch, total)
        _end_epoch(acc, model, processor, family, dev_examples, cfg, optimizer, scheduler, state, epoch, stage, out)
    bar.close()
    summary = {
        "stage": stage,
        "epochs_run": state["epoch"],
        "steps": state["step"],
        "seconds": time.perf_counter() - t0,
        "best": state["best"],
        "history": state["history"],
        "processes": acc.num_processes,
        "train_examples": len(train_examples),
        "train_with_chain": sum(1 for ex in train_examples if ex.teacher_cot),
        "dev_examples": len(dev_examples),
    }
    if acc.is_main_process:
        _write_model_card(out, stage, summary, state, cfg, card)
    acc.wait_for_everyone()
    return summary


__all__ = ["TrainConfig", "TrainSettings", "fit", "make_batches", "seed_everything"]
