"""Loading an HF VLM: a local directory or hub id (``HF_HUB_OFFLINE`` honoured), the dtype and
device, an optional LoRA adapter merged with peft, and a short content version of the weights.
``trust_remote_code`` is always off and weights load from safetensors only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .processor import _read_json, build_processor


def resolve_local(target: str, *, kind: str = "model") -> Path:
    """A local directory for ``target`` (a directory, or a hub id fetched with
    ``huggingface_hub.snapshot_download``, honouring ``HF_HUB_OFFLINE``)."""
    p = Path(target).expanduser()
    if p.is_dir():
        return p
    if p.exists() or target.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{kind} directory not found: {target}")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                target,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*", "merges.txt"],
            )
        )
    except Exception as exc:  # network, auth, missing repo: say what to do
        raise FileNotFoundError(
            f"could not fetch {kind} {target!r} from the model hub ({type(exc).__name__}: {exc}); "
            f"download it where the hub is reachable (huggingface-cli download {target}) and pass its directory"
        ) from exc


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(dtype: Any, device: str):
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype.lower()]
    return dtype


def load_model_and_processor(
    target: str,
    adapter: str | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    merge_adapter: bool = True,
    attn_implementation: str | None = None,
) -> tuple[Any, Any, dict]:
    """Load ``(model, processor, info)``: model in eval mode on ``device`` (bf16 on GPU, fp32 on
    CPU by default), LoRA ``adapter`` merged with peft. ``target`` may itself be an adapter
    directory (``adapter_config.json``); its base model is then loaded from
    ``base_model_name_or_path``."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    local = resolve_local(target)
    if not (local / "config.json").exists() and (local / "adapter_config.json").exists():
        if adapter:
            raise ValueError(f"{target} is an adapter; give its base model as hf:<base>+{target}")
        adapter = str(local)
        base = _read_json(local / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise ValueError(f"adapter {target} does not name its base model")
        local = resolve_local(base)
    device = device or default_device()
    torch_dtype = _dtype(dtype, device)
    config = AutoConfig.from_pretrained(local, trust_remote_code=False)
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=False, use_safetensors=True)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if str(device).startswith("cuda"):
        kwargs["device_map"] = str(device)  # load straight onto the GPU (no full CPU copy)
    model = AutoModelForImageTextToText.from_pretrained(local, **kwargs)
    adapter_dir = None
    if adapter:
        from peft import PeftModel

        adapter_dir = resolve_local(adapter, kind="adapter")
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        if merge_adapter:
            model = model.merge_and_unload()
    model = model.to(device).eval()
    processor = build_processor(local, config)
    info = {
        "family": config.model_type,
        "base": str(target if not adapter else local),
        "adapter": str(adapter) if adapter else None,
        "local_base": str(local),
        "local_adapter": str(adapter_dir) if adapter_dir else None,
        "device": str(device),
        "dtype": str(torch_dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, processor, info


def version_of(path: Path) -> str:
    """A short content version of a model or adapter directory: the hub commit for a hub
    snapshot, else a hash of its config, weight file sizes and the last MiB of each weight file
    (cheap, and different for every training run; weights are never read in full)."""
    import hashlib

    parts = path.resolve().parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and re.fullmatch(r"[0-9a-f]{40}", parts[i + 1]):
            return parts[i + 1][:12]
    h = hashlib.sha256()
    for name in ("adapter_config.json", "config.json"):
        if (path / name).exists():
            h.update((path / name).read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            fh.seek(max(0, size - 2**20))
            h.update(fh.read())
    return h.hexdigest()[:12]
