"""Worker for test_distributed.py: trains the tiny assistant under `accelerate launch` (2 CPU
processes, gloo) and writes, per rank, what it saw and a checksum of its live LoRA weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import training.mulcot.assistant as assistant_mod
from training.data import load_examples
from training.mulcot.trainer import TrainSettings
from training.mulcot.vlm import LoraSettings

_live: list[torch.nn.Parameter] = []
_orig_add_lora = assistant_mod.add_lora


def _capturing_add_lora(*args, **kwargs):
    model = _orig_add_lora(*args, **kwargs)
    _live.extend(p for p in model.parameters() if p.requires_grad)
    return model


def main(model: str, train: str, dev: str, out: str) -> None:
    assistant_mod.add_lora = _capturing_add_lora
    acc = Accelerator(cpu=True)
    settings = TrainSettings(epochs=1, batch_size=2, grad_accum=1, lr=2e-2, image_size=56, log_every=1, progress=False,
                             max_answer_tokens=64, cpu=True)
    s = assistant_mod.train_assistant(model=model, train=load_examples(train), dev=load_examples(dev), out_dir=out,
                                      settings=settings, lora=LoraSettings(r=4, alpha=8, modules_to_save=["lm_head"]),
                                      accelerator=acc)
    info = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "backend": str(getattr(acc.state, "backend", None)),
        "torch_backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "steps": s["steps"],
        "checksum": float(sum(p.detach().double().abs().sum() for p in _live)),
        "lora_b_nonzero": any(float(p.detach().abs().sum()) > 0 for p in _live if p.dim() == 2 and p.shape[1] == 4),
    }
    (Path(out) / f"rank{acc.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(*sys.argv[1:5])
