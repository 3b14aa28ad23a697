"""Hugging Face student: any ``AutoModelForImageTextToText`` VLM (Qwen2.5-VL first,
Idefics3/SmolVLM second), optionally with a LoRA adapter merged in.

How a prediction is made (see docs/model.md for the reasoning):

1. **Label** (``classify``): the label prompt (``prompts.label_prompt``) is rendered with the
   model's chat template, the batch is left-padded and run through ONE forward pass; the
   next-token logits at the start of the assistant turn are read at the *first token* of each
   label word (``positive``/``neutral``/``negative``, with the leading space when the template
   ends without whitespace, e.g. SmolVLM's ``Assistant:``), and a softmax over those three
   logits gives the probabilities. This is exact when the three first tokens differ (true for
   the Qwen2 and SmolVLM tokenizers: each word is one token) since the model commits to a label
   at its first token; when two label words share their first token, ``label_scoring="auto"``
   scores the full words instead (each word appended to the prompt, 3 x batch rows in the same
   single forward pass, summed log-probabilities).
2. **Chain** (``explain``): the reasoning prompt (``prompts.reasoning_prompt``, the prompt the
   student was trained on) is generated from, greedy by default. Decoding stops as soon as the
   model writes the ``Prediction`` key; the text before it is kept and ``"Prediction": <label>``
   is appended with the label from step 1, so label and chain agree for every prediction by
   construction. What the model's own conclusion argued for is kept in
   ``Prediction.extra["chain_label"]`` / ``["chain_agrees"]`` so disagreement is measurable.
   ``chain_prompt="guided"`` instead conditions the chain on the label
   (``prompts.guided_reasoning_prompt``).

Environment notes: ``AutoProcessor`` builds the video processor too, which needs torchvision;
the processors here are built from their image processor (PIL backend) and tokenizer, so
torchvision is not needed. ``trust_remote_code`` is always off and weights load from
safetensors only.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..chain import chain_label, parse_chain
from ..prompts import LABEL_WORDS, PROMPT_VERSION, guided_reasoning_prompt, label_prompt, reasoning_prompt
from ..types import BaseStudent, Label, PostInput, Prediction

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

#: Families with a processor built here (no torchvision needed); others use AutoProcessor.
KNOWN_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "idefics3")

#: Default square resolution for Qwen-family images (pixels per side; the method's ~280x280).
DEFAULT_IMAGE_SIZE = 280

_PRED_KEY = re.compile(r"(?:^|\n)[ \t\"'`*#>\-{,]*prediction[\"'`* \t]*[:=]?", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# processors


def _qwen_processor_class():
    from transformers import Qwen2_5_VLProcessor

    class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL processor without the video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template)

    return Qwen2_5_VLImageTextProcessor


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _chat_template(local: Path, tokenizer: Any) -> str | None:
    jinja = local / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    data = _read_json(local / "chat_template.json")
    if data.get("chat_template"):
        return data["chat_template"]
    data = _read_json(local / "processor_config.json")
    if isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def build_processor(local: str | Path, config: Any | None = None) -> Any:
    """Build the processor of the model saved in directory ``local`` without torchvision.

    Qwen2-VL/Qwen2.5-VL: PIL ``Qwen2VLImageProcessorPil`` + tokenizer; Idefics3 (SmolVLM v1):
    ``Idefics3ImageProcessorPil`` + tokenizer. Other families fall back to ``AutoProcessor``.
    The tokenizer pads on the left.
    """
    from transformers import AutoConfig, AutoTokenizer

    local = Path(local)
    config = config or AutoConfig.from_pretrained(local, trust_remote_code=False)
    family = config.model_type
    tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    tokenizer.padding_side = "left"
    template = _chat_template(local, tokenizer)
    if family in ("qwen2_5_vl", "qwen2_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        image_processor = Qwen2VLImageProcessorPil.from_pretrained(local)
        processor = _qwen_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                            chat_template=template)
    elif family == "idefics3":
        from transformers import Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        image_processor = Idefics3ImageProcessorPil.from_pretrained(local)
        seq_len = _read_json(local / "processor_config.json").get("image_seq_len")
        if not seq_len:
            v = config.vision_config
            seq_len = int((v.image_size // v.patch_size) ** 2 / (config.scale_factor**2))
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_len=int(seq_len), chat_template=template)
    else:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(local, trust_remote_code=False)
        processor.tokenizer.padding_side = "left"
    if getattr(processor, "tokenizer", None) is not None and processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def save_processor(processor: Any, path: str | Path, *, image_seq_len: int | None = None) -> None:
    """Save a processor built by :func:`build_processor` (tokenizer, image processor, chat
    template) so that :func:`build_processor` reads it back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    if processor.chat_template:
        (path / "chat_template.jinja").write_text(processor.chat_template)
    meta = {"processor_class": type(processor).__name__.replace("ImageText", "")}
    seq = image_seq_len or getattr(processor, "image_seq_len", None)
    if seq:
        meta["image_seq_len"] = int(seq)
    (path / "processor_config.json").write_text(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------------------------
# loading


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


# --------------------------------------------------------------------------------------------
# inputs


def prepare_image(image: "Image.Image", *, min_side: int = 28, max_ratio: float = 50.0,
                  max_side: int | None = None) -> "Image.Image":
    """Make any PIL image safe for the VLM image processors: RGB (transparent pixels on white,
    palette/greyscale/1-bit converted), at least ``min_side`` pixels on each side, and an aspect
    ratio of at most ``max_ratio`` (Qwen's processor refuses > 200; extreme strips are padded
    with white). With ``max_side``, larger images are first shrunk (aspect kept) so the
    processors never turn a full-size photo into a float array."""
    from PIL import Image

    im = image
    if max_side and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.BICUBIC, reducing_gap=2.0)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        im = bg
    elif im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if w < 1 or h < 1:  # pragma: no cover - PIL does not make these
        im = Image.new("RGB", (min_side, min_side), (255, 255, 255))
        w, h = im.size
    if max(w, h) / min(w, h) > max_ratio:
        nw, nh = (w, math.ceil(w / max_ratio)) if w > h else (math.ceil(h / max_ratio), h)
        canvas = Image.new("RGB", (max(nw, w), max(nh, h)), (255, 255, 255))
        canvas.paste(im, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        im = canvas
        w, h = im.size
    if min(w, h) < min_side:
        scale = min_side / min(w, h)
        im = im.resize((max(min_side, round(w * scale)), max(min_side, round(h * scale))), Image.BICUBIC)
    return im


def messages_for(post: PostInput, prompt: str, answer: str | None = None) -> list[dict]:
    """Chat messages for one post: the image (if any) then the prompt text; optionally the
    assistant's answer (for training targets)."""
    content: list[dict] = []
    if post.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": prompt})
    msgs = [{"role": "user", "content": content}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def render_prompt(processor: Any, post: PostInput, prompt: str) -> str:
    """The chat-template text of ``prompt`` for ``post``, ending with the assistant turn start."""
    msgs = messages_for(post, prompt)
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return processor.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def encode_batch(
    processor: Any,
    posts: Sequence[PostInput],
    prompts: Sequence[str],
    *,
    family: str,
    image_size: int | None = None,
    device: Any = None,
) -> Any:
    """Tokenise a batch (chat template, left padding) with its images preprocessed together.

    ``image_size``: for Qwen models the pixel budget is ``image_size**2`` (min = max pixels, the
    aspect ratio kept, sides rounded to 28); for Idefics3 the longest edge of the resize.
    Returns the processor's ``BatchFeature`` (on ``device`` if given)."""
    texts = [render_prompt(processor, p, q) for p, q in zip(posts, prompts)]
    batch = _encode_rendered(processor, posts, texts, family=family, image_size=image_size)
    return batch.to(device) if device is not None else batch


def _encode_rendered(processor: Any, posts: Sequence[PostInput], texts: Sequence[str], *, family: str,
                     image_size: int | None) -> Any:
    """Like :func:`encode_batch` for texts already rendered with the chat template."""
    kwargs: dict[str, Any] = dict(text=list(texts), padding=True, return_tensors="pt")
    if any(p.image is not None for p in posts):
        # shrink big photos early: 2x the target side keeps the processors' own resize exact enough
        max_side = max(448, 2 * int(image_size)) if image_size else 2048
        images = [prepare_image(p.image, max_side=max_side) if p.image is not None else None for p in posts]
        if family in ("qwen2_5_vl", "qwen2_vl"):
            kwargs["images"] = [im for im in images if im is not None]
            if image_size:
                px = int(image_size) ** 2
                kwargs["images_kwargs"] = {"min_pixels": px, "max_pixels": px}
        else:
            kwargs["images"] = [[im] if im is not None else [] for im in images]
            if image_size and family == "idefics3":
                kwargs["images_kwargs"] = {"size": {"longest_edge": int(image_size)}}
    batch = processor(**kwargs)
    if "mm_token_type_ids" in batch and family not in ("qwen2_5_vl", "qwen2_vl"):
        batch.pop("mm_token_type_ids")
    return batch


# --------------------------------------------------------------------------------------------
# the student


class HFStudent(BaseStudent):
    """A Hugging Face VLM student. Build with :meth:`from_pretrained` (or ``load_student``)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "hf",
        version: str = "0",
        family: str | None = None,
        image_size: int | None = None,
        max_new_tokens: int = 384,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int | None = None,
        chain: bool = True,
        chain_prompt: str = "reasoning",
        label_scoring: str = "auto",
        vision_attention: str = "packed",
        cache_implementation: str | None = None,
        info: dict | None = None,
    ) -> None:
        if chain_prompt not in ("reasoning", "guided"):
            raise ValueError("chain_prompt must be 'reasoning' or 'guided'")
        if vision_attention not in ("packed", "model"):
            raise ValueError("vision_attention must be 'packed' or 'model'")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.version = version
        self.family = family or model.config.model_type
        if image_size is None and self.family in ("qwen2_5_vl", "qwen2_vl"):
            image_size = DEFAULT_IMAGE_SIZE
        self.image_size = image_size
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = bool(do_sample)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = seed
        self.chain = bool(chain)
        self.chain_prompt = chain_prompt
        self.info = dict(info or {})
        self.cache_implementation = cache_implementation
        if vision_attention == "packed":
            from .attention import PACKED_SDPA, use_packed_vision_attention

            if use_packed_vision_attention(model):
                self.info["vision_attention"] = PACKED_SDPA
        if label_scoring not in ("auto", "first_token", "sequence"):
            raise ValueError("label_scoring must be 'auto', 'first_token' or 'sequence'")
        self.label_scoring = label_scoring
        self.label_word_ids = self._label_token_ids()
        if label_scoring == "first_token" and not self.first_token_exact:
            raise ValueError(
                f"label words {LABEL_WORDS} share a first token with this tokenizer "
                f"({self.label_token_ids}); use label_scoring='sequence' or 'auto'"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, target: str | Path, adapter: str | Path | None = None, **options: Any) -> "HFStudent":
        """Load ``target`` (directory or hub id) with an optional LoRA ``adapter`` merged in.

        Options: ``device`` (default cuda if available), ``dtype`` (bf16 on GPU, fp32 on CPU),
        ``image_size`` (Qwen: square pixel budget, default 280), ``max_new_tokens`` (384),
        ``do_sample`` (False = greedy), ``temperature``, ``top_p``, ``seed``, ``chain`` (False =
        labels-only: ``predict`` never generates), ``chain_prompt`` ("reasoning" | "guided"),
        ``label_scoring`` ("auto": first-token logits when the label words' first tokens differ,
        else full-word log-probabilities; "first_token"; "sequence"), ``merge_adapter`` (True),
        ``attn_implementation``, ``vision_attention`` ("packed": Qwen-VL vision towers run all
        their windows in one attention call instead of one call per window, unless flash-attn is
        in use; "model": leave the model's own), ``cache_implementation`` (passed to
        ``generate``, e.g. "static"; default: transformers' dynamic cache), ``name``, ``version``.
        Unknown options are ignored with a log line (settings objects pass extra keys).
        """
        load_keys = ("device", "dtype", "merge_adapter", "attn_implementation")
        init_keys = ("name", "version", "image_size", "max_new_tokens", "do_sample", "temperature", "top_p",
                     "seed", "chain", "chain_prompt", "label_scoring", "vision_attention", "cache_implementation")
        unknown = sorted(set(options) - set(load_keys) - set(init_keys))
        if unknown:
            log.info("HFStudent ignores options %s", unknown)
        model, processor, info = load_model_and_processor(
            str(target), str(adapter) if adapter else None, **{k: options[k] for k in load_keys if k in options}
        )
        init = {k: options[k] for k in init_keys if k in options and options[k] is not None}
        init.setdefault("name", f"hf:{target}" + (f"+{adapter}" if adapter else ""))
        init.setdefault("version", "+".join(
            _version_of(Path(d)) for d in (info["local_base"], info["local_adapter"]) if d))
        return cls(model, processor, family=info["family"], info=info, **init)

    # ---- label scoring ------------------------------------------------------------------
    def _label_token_ids(self) -> list[list[int]]:
        """Token ids of each label word as it would follow the assistant-turn start."""
        probe = render_prompt(self.processor, PostInput(text="x"), "x")
        self.label_lead = "" if probe[-1:].isspace() else " "
        return [self.tokenizer.encode(self.label_lead + word, add_special_tokens=False) for word in LABEL_WORDS]

    @property
    def label_token_ids(self) -> list[int]:
        """First token of each label word (``LABELS`` order)."""
        return [ids[0] for ids in self.label_word_ids]

    @property
    def first_token_exact(self) -> bool:
        """True when the three label words start with three different tokens."""
        return len(set(self.label_token_ids)) == len(LABEL_WORDS)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _inference(self):
        import torch

        return torch.inference_mode()

    def label_logits(self, batch: Sequence[PostInput]):
        """``(scores, prompt_lengths)``: scores of the three label words (``LABELS`` order) for
        each post, from one forward pass: first-token logits, or (``label_scoring="sequence"``, or automatically when two
        label words share a first token) the summed log-probabilities of every token of each
        word. A softmax over them gives the probabilities."""
        if self.label_scoring == "sequence" or (self.label_scoring == "auto" and not self.first_token_exact):
            return self._sequence_scores(batch)
        enc = encode_batch(self.processor, batch, [label_prompt(p) for p in batch], family=self.family,
                           image_size=self.image_size, device=self.device)
        with self._inference():
            out = self.model(**enc, use_cache=False, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        return logits[:, self.label_token_ids], enc["attention_mask"].sum(-1).tolist()

    def _sequence_scores(self, batch: Sequence[PostInput]):
        """Full-continuation scoring: each post appears three times (prompt + each label word),
        all rows in one forward pass; score = sum of the word tokens' log-probabilities."""
        import torch

        k = len(LABEL_WORDS)
        rows = [p for p in batch for _ in range(k)]
        rendered = [render_prompt(self.processor, p, label_prompt(p)) for p in batch]
        texts = [r + self.label_lead + w for r in rendered for w in LABEL_WORDS]
        full = _encode_rendered(self.processor, rows, texts, family=self.family, image_size=self.image_size)
        full = full.to(self.device)
        # how many tokens the word adds to its prompt (text-only counts: image expansion is equal)
        n_prompt_text = [len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered]
        n_word = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) - n_prompt_text[i // k]
                  for i, t in enumerate(texts)]
        width = max(n_word)
        with self._inference():
            out = self.model(**full, use_cache=False, logits_to_keep=width + 1)
        logp = out.logits.float().log_softmax(-1)  # (3B, width+1, V); left padding: rows end together
        ids = full["input_ids"]
        scores = torch.empty(len(rows), device=logp.device)
        for r, n in enumerate(n_word):
            # the logits at position t predict token t+1: the last n tokens (the word) are
            # predicted by the n positions just before them
            target = ids[r, -n:]
            scores[r] = logp[r, -(n + 1):-1, :].gather(-1, target.unsqueeze(-1)).sum()
        lengths = full["attention_mask"].sum(-1).view(len(batch), k)[:, 0] - torch.tensor(
            [n_word[i * k] for i in range(len(batch))], device=full["attention_mask"].device)
        return scores.view(len(batch), k), lengths.tolist()

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        batch = list(batch)
        if not batch:
            return []
        t0 = time.perf_counter()
        scores, prompt_lens = self.label_logits(batch)
        probs = scores.softmax(-1).cpu().tolist()
        ms = (time.perf_counter() - t0) * 1000
        return [
            self.label_prediction(
                p, prompt_version=PROMPT_VERSION, prompt_tokens=int(n), label_ms=ms,
                extra={"batch_size": len(batch), "label_prompt_tokens": int(n)},
            )
            for p, n in zip(probs, prompt_lens)
        ]

    # ---- chain generation ---------------------------------------------------------------
    def generate_raw(self, batch: Sequence[PostInput], prompts: Sequence[str], *, stop_at_prediction: bool = True,
                     max_new_tokens: int | None = None) -> tuple[list[str], list[int], list[int]]:
        """Generate from ``prompts``; returns (texts, prompt token counts, generated token counts)."""
        import torch

        enc = encode_batch(self.processor, batch, prompts, family=self.family, image_size=self.image_size,
                           device=self.device)
        gen: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens or self.max_new_tokens),
                                   do_sample=self.do_sample, pad_token_id=self.tokenizer.pad_token_id)
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        gen["eos_token_id"] = eos
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
        else:
            gen.update(temperature=None, top_p=None, top_k=None)
        if stop_at_prediction:
            gen.update(stop_strings=["Prediction", "prediction\""], tokenizer=self.tokenizer)
        if self.cache_implementation:
            gen["cache_implementation"] = self.cache_implementation
        if self.seed is not None:
            torch.manual_seed(self.seed)
        with self._inference():
            out = self.model.generate(**enc, **gen)
        new = out[:, enc["input_ids"].shape[1]:]
        eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        pad = self.tokenizer.pad_token_id
        counts = []
        for row in new.tolist():
            # new tokens up to the first end-of-turn (counted) or padding (not counted: rows that
            # stopped early, on a stop string or eos, are padded to the batch's length)
            n = len(row)
            for i, t in enumerate(row):
                if t == pad or t in eos_ids:
                    n = i + (0 if t == pad else 1)
                    break
            counts.append(n)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts, enc["attention_mask"].sum(-1).tolist(), counts

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        batch = list(batch)
        if not batch:
            return []
        if len(batch) != len(predictions):
            raise ValueError("batch and predictions differ in length")
        t0 = time.perf_counter()
        if self.chain_prompt == "guided":
            prompts = [guided_reasoning_prompt(p, pr.label) for p, pr in zip(batch, predictions)]
        else:
            prompts = [reasoning_prompt(p) for p in batch]
        texts, prompt_lens, counts = self.generate_raw(batch, prompts)
        ms = (time.perf_counter() - t0) * 1000
        out = []
        for pred, text, n_prompt, n_gen in zip(predictions, texts, prompt_lens, counts):
            chain, own = chain_with_label(text, pred.label)
            extra = dict(pred.extra)
            extra.update(
                chain_label=own.value if own else None,
                chain_agrees=(own == pred.label) if own else None,
                chain_prompt_tokens=int(n_prompt),
            )
            out.append(
                Prediction(
                    **{
                        **pred.__dict__,
                        "chain": chain,
                        "prompt_tokens": pred.prompt_tokens + int(n_prompt),
                        "generated_tokens": int(n_gen),
                        "chain_ms": ms,
                        "extra": extra,
                    }
                )
            )
        return out

    def predict(self, batch: Sequence[PostInput], *, chain: bool = True) -> list[Prediction]:
        """Label (+ chain unless ``chain=False`` or the student was loaded with ``chain=False``)."""
        return super().predict(batch, chain=chain and self.chain)

    def predict_label_first(self, batch: Sequence[PostInput], *, chain: bool = True) -> Iterator[list[Prediction]]:
        """Yield the labels first (``classify``), then, unless labels-only, the same predictions
        with chains: lets a caller publish the label before the chain is generated."""
        return super().predict_label_first(batch, chain=chain and self.chain)


def chain_with_label(generated: str, label: Label):
    """Cut ``generated`` at its ``Prediction`` key, append ``"Prediction": <label>`` and parse.

    Returns ``(chain, own)``: the parsed chain (Prediction == label) and the label the model's own
    text argued for (its Prediction field if it wrote one, else the last label word of its
    conclusion), or None."""
    text = generated or ""
    m = _PRED_KEY.search(text)
    own = None
    if m:
        own_chain = parse_chain(text)
        own = chain_label(own_chain)
        text = text[: m.start()]
    else:
        own = chain_label(parse_chain(text))
        # decoding stopped on the word "Prediction" inside a line: drop that word
        text = re.sub(r"[\"'`*]*prediction[\"'`*]*\s*$", "", text, flags=re.IGNORECASE)
    text = text.rstrip(" \t\r\n,")
    raw = (text + "\n\n" if text else "") + f'"Prediction": {label.value}'
    chain = parse_chain(raw).with_prediction(label)
    return chain, own


def _version_of(path: Path) -> str:
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


__all__ = [
    "HFStudent",
    "build_processor",
    "save_processor",
    "load_model_and_processor",
    "encode_batch",
    "render_prompt",
    "messages_for",
    "prepare_image",
    "chain_with_label",
    "DEFAULT_IMAGE_SIZE",
]
