"""Merge a student's LoRA adapter into its base VLM and save one directory that vLLM or SGLang
can serve (``docs/deploy.md``, "vLLM and SGLang").

vLLM applies LoRA adapters to the language model only and ignores LoRA weights on the vision
tower, so a MulCoT-RD adapter (trained on both) must be merged before serving; SGLang likewise
serves the merged weights most simply.

    python deploy/merge_lora.py sghn/MulCoT-RD-3B models/MulCoT-RD-3B-merged
    python deploy/merge_lora.py Qwen/Qwen2.5-VL-3B-Instruct models/merged --adapter runs/student/adapter

``target`` is a model directory or hub id, or an adapter whose ``adapter_config.json`` names its
base. The merged weights are saved as safetensors in ``--dtype`` (bf16 by default); the base's
own tokenizer, image-processor and chat-template files are copied unchanged, so the serving
engine reads them with its own transformers version.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: Weight and config files of the base that the merged model replaces.
_REPLACED = ("config.json", "model.safetensors.index.json", "generation_config.json")


def merge(target: str, out: str | Path, *, adapter: str | None = None, dtype: str = "bf16") -> Path:
    """Merge and save; returns ``out``. Runs on the CPU (the model is held in memory in ``dtype``)."""
    from model.backends.hf.loading import load_model_and_processor

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    model, _processor, info = load_model_and_processor(target, adapter, device="cpu", dtype=dtype, merge_adapter=True)
    if not info["adapter"]:
        raise ValueError(f"{target} has no LoRA adapter to merge (give --adapter, or an adapter directory/id)")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(info["local_base"])
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in _REPLACED and not f.name.startswith("."):
            shutil.copy2(f, out / f.name)
    model.save_pretrained(out, safe_serialization=True)
    (out / "mulcot_merge.json").write_text(json.dumps(
        {"base": info["base"], "adapter": info["adapter"], "dtype": info["dtype"], "family": info["family"]}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="base model (directory or hub id) or an adapter naming its base")
    ap.add_argument("out", help="directory to write (must be empty or absent)")
    ap.add_argument("--adapter", help="LoRA adapter directory or hub id (when target is the base)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = ap.parse_args(argv)
    path = merge(args.target, args.out, adapter=args.adapter, dtype=args.dtype)
    print(f"merged model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
