"""Test-only helper: teach a tiny random model (``model.backends.tiny.build``) a few known answers."""

from __future__ import annotations

from pathlib import Path

from model import PostInput
from model.backends.tiny.build import load_tiny


def overfit_tiny(
    src: str | Path,
    examples: list[tuple[PostInput, str, str]],
    out: str | Path,
    *,
    steps: int = 60,
    lr: float = 5e-3,
    image_size: int = 56,
    seed: int = 0,
) -> tuple[Path, float]:
    """Teach a tiny model ``examples`` of ``(post, prompt, answer)`` by plain supervised
    fine-tuning (loss on the answer tokens + end-of-turn only), save it to ``out`` and return
    ``(out, final_loss)``. With a few examples and ~60 steps the random model memorises them,
    so real generation through the backend reproduces a known chain."""
    import torch

    from model.backends.hf.inputs import encode_batch, render_prompt
    from model.backends.hf.processor import save_processor

    torch.manual_seed(seed)
    model, processor = load_tiny(src)
    family = model.config.model_type
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    batches = []
    for post, prompt, answer in examples:
        enc = encode_batch(processor, [post], [prompt], family=family, image_size=image_size)
        lead = "" if render_prompt(processor, post, prompt)[-1:].isspace() else " "
        ans = torch.tensor([tok.encode(lead + answer, add_special_tokens=False) + [eos]])
        n, m = enc["input_ids"].shape[1], ans.shape[1]
        inputs = {}
        for key, value in enc.items():
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == n and key != "pixel_values":
                fill = ans if key == "input_ids" else torch.full((1, m), 1 if key == "attention_mask" else 0)
                value = torch.cat([value, fill.to(value.dtype)], dim=1)
            inputs[key] = value
        inputs["labels"] = torch.cat([torch.full((1, n), -100), ans], dim=1)
        batches.append(inputs)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_value = float("nan")
    for _ in range(steps):
        opt.zero_grad()
        total = sum(model(**b).loss for b in batches) / len(batches)
        total.backward()
        opt.step()
        loss_value = float(total.detach())
    model.eval()
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    save_processor(processor, out)
    return out, loss_value
