"""A student served by an OpenAI-compatible endpoint: ``openai:<base_url>#<model>``.

For vLLM, SGLang or any server with the same ``/chat/completions`` wire format and image input,
e.g. ``openai:http://vllm:8000/v1#sghn/MulCoT-RD-3B`` (``#<model>`` may be left out when the
server serves one model: the first id of ``GET <base_url>/models`` is used). Backend options may
follow the model as a query string: ``...#sghn/MulCoT-RD-3B?constraint=regex&max_concurrency=32``.

How a prediction is made (the same two steps as the in-process HF student, see
``model/backends/hf/student.py``):

1. **Label** (``classify``): one request per post with the label prompt
   (``prompts.label_prompt``; the image as a base64 ``image_url`` part), ``max_tokens=1``,
   ``temperature=0``, ``logprobs=true`` and ``top_logprobs=K`` (default 20). The top tokens at
   the answer position are matched to the three label words (a token counts for a label when,
   lower-cased and stripped, it is the word or the start of exactly one word: ``Positive``,
   `` positive``, ``pos``); the probabilities of the tokens of a label are added and the three
   are renormalised to sum to 1. A label that is not among the top K gets the smaller of the
   smallest listed probability and an equal share of the probability mass not listed (an upper
   bound: its true probability is below every listed one); ``extra["labels_not_in_top"]`` names
   such labels. When no label word is among the top K at all, a second request constrains the
   answer to the three words (``constraint``: ``structured_outputs`` = vLLM >= 0.10.2's
   ``{"structured_outputs": {"choice": [...]}}``, ``guided_choice`` = older vLLM, ``regex`` =
   SGLang, ``none`` = no fallback: the post fails); its top tokens are read the same way, and if
   they still name no label, the answer's first label word gets probability 1 (``extra["label_source"]``
   says which path was taken).

   With ``label_scoring="prompt_logprobs"`` (vLLM: its ``prompt_logprobs``, ``add_generation_prompt``
   and ``continue_final_message`` request fields) every label word is scored exactly instead, as
   the HF backend's full-word scoring does: one request per word with the word as the start of
   the assistant's answer and ``prompt_logprobs: 0``; the log-probabilities of the word's tokens
   (the last prompt positions; their number is the word request's prompt length minus the label
   request's) are summed, and a softmax over the three words gives the probabilities. Four
   requests per post instead of one (vLLM's prefix cache serves the shared prompt).
2. **Chain** (``explain``): a request with the reasoning prompt (the same user turn: the image
   and the post), greedy, ``stop`` at the ``Prediction`` key; the text is cut there and
   ``"Prediction": <label>`` is appended with the label from step 1
   (``model.chain.chain_with_label``), so the chain's prediction agrees with the label for every
   prediction. What the model's own text argued for is kept in ``extra["chain_label"]`` /
   ``["chain_agrees"]``.

Token counts come from each answer's ``usage``. Requests run concurrently (``max_concurrency``)
on a private event loop (``model.http.LoopThread``), with retries and backoff on 429/5xx
(``model.http.ChatClient``). The API key is the ``api_key`` option, else
``$MULCOT_OPENAI_API_KEY``, else ``$OPENAI_API_KEY``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from ...chain import STOP_STRINGS, label_in, with_generated_chain
from ...http import ChatClient, EndpointError, LoopThread, api_key_from_env, message_text, user_message
from ...prompts import LABEL_WORDS, PROMPT_VERSION, guided_reasoning_prompt, label_prompt, reasoning_prompt
from ...types import LABELS, BaseStudent, Label, PostInput, Prediction

log = logging.getLogger(__name__)

CONSTRAINTS = ("structured_outputs", "guided_choice", "regex", "none")
LABEL_SCORING = ("top_logprobs", "prompt_logprobs")
_STRIP = " \t\r\n\"'`*:.,!_\u2581\u0120"  # quotes, markup, and SentencePiece/BPE space marks


def parse_target(target: str) -> tuple[str, str | None, dict[str, Any]]:
    """``"http://host:8000/v1#org/model?constraint=regex&top_logprobs=10"`` ->
    ``("http://host:8000/v1", "org/model", {"constraint": "regex", "top_logprobs": 10})``.

    Options after ``?`` are backend options (values read as YAML scalars), so a worker configured
    by ``MULCOT_MODEL_SPEC`` alone can set them."""
    from urllib.parse import parse_qsl

    import yaml

    base, _, rest = target.partition("#")
    model, _, query = rest.partition("?")
    base = base.strip()
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"openai spec needs an http(s) base URL, got {target!r} (openai:<base_url>#<model>)")
    options = {k: yaml.safe_load(v) for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))}
    return base.rstrip("/"), (model.strip() or None), options


def label_of_token(token: str) -> Label | None:
    """The label a top-logprob token stands for: the word itself (any case, leading space or
    markup stripped, trailing text allowed) or the start of exactly one label word."""
    t = (token or "").strip(_STRIP).lower()
    if not t:
        return None
    hits = [label for label, word in zip(LABELS, LABEL_WORDS) if t.startswith(word) or word.startswith(t)]
    return hits[0] if len(hits) == 1 else None


def label_probabilities(top: Sequence[dict]) -> tuple[list[float] | None, list[str]]:
    """Probabilities of the three labels (``LABELS`` order, summing to 1) from the top logprobs
    of the answer position, and the labels that were not among them (bounded, see module doc).
    None when no listed token names a label."""
    found = [0.0, 0.0, 0.0]
    seen = [False, False, False]
    listed = []
    for item in top or ():
        try:
            p = math.exp(float(item["logprob"]))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        listed.append(p)
        label = label_of_token(str(item.get("token", "")))
        if label is not None:
            i = LABELS.index(label)
            found[i] += p
            seen[i] = True
    if not any(seen):
        return None, []
    missing = [i for i in range(3) if not seen[i]]
    if missing:
        leftover = max(0.0, 1.0 - sum(listed))
        floor = min(min(listed), leftover / len(missing))
        for i in missing:
            found[i] = floor
    total = sum(found)
    if not total > 0:  # every label token listed with probability 0 (e.g. vLLM's -9999 logprobs)
        return None, []
    return [p / total for p in found], [LABELS[i].value for i in missing]


def _prompt_token_logprob(entry: dict | None, word: str) -> float:
    """The log-probability of the prompt's own token at one position of vLLM's ``prompt_logprobs``
    (``{token_id: {"logprob", "rank", "decoded_token"}}``; with ``prompt_logprobs: 0`` it holds
    only the prompt token; otherwise the entry whose text is part of ``word``)."""
    if not entry:
        raise EndpointError("prompt_logprobs has no entry for a label-word token")
    items = list(entry.values())
    if len(items) > 1:
        items = [v for v in items if str(v.get("decoded_token", "")).strip() and
                 str(v.get("decoded_token", "")).strip().lower() in word] or items
    return float(items[0]["logprob"])


def _top_logprobs(data: dict) -> list[dict]:
    """The first generated token's ``top_logprobs`` of a chat-completions answer ([] if none)."""
    try:
        content = data["choices"][0]["logprobs"]["content"]
        return list(content[0].get("top_logprobs") or [])
    except (KeyError, IndexError, TypeError):
        return []


class OpenAIStudent(BaseStudent):
    """A student behind an OpenAI-compatible endpoint. Build with ``load_student("openai:...")``."""

    reads_pixels = True

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        name: str | None = None,
        version: str | None = None,
        max_concurrency: int = 16,
        requests_per_s: float | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        top_logprobs: int = 20,
        constraint: str = "structured_outputs",
        label_scoring: str = "top_logprobs",
        max_new_tokens: int = 384,
        temperature: float = 0.0,
        chain: bool = True,
        chain_prompt: str = "reasoning",
        image_max_side: int | None = 448,
        image_size: int | None = None,
        extra_body: dict | None = None,
        **ignored: Any,
    ) -> None:
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        if label_scoring not in LABEL_SCORING:
            raise ValueError(f"label_scoring must be one of {LABEL_SCORING}, got {label_scoring!r}")
        if chain_prompt not in ("reasoning", "guided"):
            raise ValueError("chain_prompt must be 'reasoning' or 'guided'")
        if ignored:
            log.info("OpenAIStudent ignores options %s", sorted(ignored))
        key = api_key if api_key else api_key_from_env()
        self.loop = LoopThread("mulcot-openai")
        self.http: ChatClient = self.loop.call(lambda: ChatClient(
            base_url, api_key=key, max_concurrency=max_concurrency, requests_per_s=requests_per_s,
            max_retries=max_retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s, timeout_s=timeout_s))
        self.model = model or self.loop.run(self._served_model())
        self.name = name or f"openai:{self.model}"
        self.version = str(version) if version else "endpoint"
        self.top_logprobs = int(top_logprobs)
        self.constraint = constraint
        self.label_scoring = label_scoring
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.chain = bool(chain)
        self.chain_prompt = chain_prompt
        self.image_max_side = image_max_side
        self.extra_body = dict(extra_body or {})
        if image_size:  # vLLM + Qwen-VL: the same square pixel budget as the in-process HF student
            px = int(image_size) ** 2
            self.extra_body.setdefault("mm_processor_kwargs", {}).update(min_pixels=px, max_pixels=px)
        self.info = {"base_url": self.http.base_url, "model": self.model}

    @classmethod
    def from_target(cls, target: str, **options: Any) -> OpenAIStudent:
        """Build from the part of the spec after ``openai:`` (``<base_url>[#<model>]``)."""
        base, model, spec_options = parse_target(target)
        options.pop("device", None)  # the server owns the device
        return cls(base, model, **{**spec_options, **options})

    async def _served_model(self) -> str:
        resp = await self.http.client.get(self.http.base_url + "/models")
        try:
            resp.raise_for_status()
            return str(resp.json()["data"][0]["id"])
        except Exception as exc:
            raise EndpointError(f"could not read the served model from {self.http.base_url}/models ({exc}); "
                                f"name it: openai:{self.http.base_url}#<model>") from None

    # ---- requests -------------------------------------------------------------------------
    def _body(self, post: PostInput, prompt: str, **params: Any) -> dict:
        return {
            "model": self.model,
            "messages": [user_message(prompt, post.image, image_max_side=self.image_max_side)],
            "temperature": self.temperature,
            **self.extra_body,
            **params,
        }

    def _constrained(self) -> dict:
        words = list(LABEL_WORDS)
        if self.constraint == "structured_outputs":
            return {"structured_outputs": {"choice": words}}
        if self.constraint == "guided_choice":
            return {"guided_choice": words}
        return {"regex": "(" + "|".join(words) + ")"}

    async def _label_one(self, post: PostInput) -> tuple[list[float], int, dict]:
        prompt = label_prompt(post)
        params = {"max_tokens": 1, "logprobs": True, "top_logprobs": self.top_logprobs}
        data = await self.http.chat(self._body(post, prompt, **params))
        tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        if self.label_scoring == "prompt_logprobs":
            return await self._label_words(post, prompt, tokens), tokens, {"label_source": "prompt_logprobs"}
        probs, missing = label_probabilities(_top_logprobs(data))
        if probs is not None:
            return probs, tokens, {"label_source": "logprobs", "labels_not_in_top": missing}
        if self.constraint == "none":
            raise EndpointError(f"no label word among the top {self.top_logprobs} tokens "
                                f"({[t.get('token') for t in _top_logprobs(data)][:5]}...) and constraint='none'")
        params = {"max_tokens": 8, "logprobs": True, "top_logprobs": self.top_logprobs, **self._constrained()}
        data = await self.http.chat(self._body(post, prompt, **params))
        probs, missing = label_probabilities(_top_logprobs(data))
        if probs is not None:
            return probs, tokens, {"label_source": "choice_logprobs", "labels_not_in_top": missing}
        chosen = label_in(message_text(data))  # the first label word, should the server ignore the constraint
        if chosen is None:
            raise ValueError(f"constrained answer names no label: {message_text(data)[:80]!r}")
        return [1.0 if l is chosen else 0.0 for l in LABELS], tokens, {"label_source": "choice"}

    async def _label_words(self, post: PostInput, prompt: str, prompt_tokens: int) -> list[float]:
        """Exact full-word scores (see module doc); softmax over the three words."""
        answers = await asyncio.gather(*(self.http.chat({
            **self._body(post, prompt, max_tokens=1, prompt_logprobs=0, add_generation_prompt=False,
                         continue_final_message=True),
        } | {"messages": [user_message(prompt, post.image, image_max_side=self.image_max_side),
                          {"role": "assistant", "content": word}]}) for word in LABEL_WORDS))
        scores = []
        for word, data in zip(LABEL_WORDS, answers):
            plp = data.get("prompt_logprobs")
            n = int((data.get("usage") or {}).get("prompt_tokens") or 0) - prompt_tokens
            if not plp or n < 1 or n >= len(plp):
                raise EndpointError(f"no usable prompt_logprobs for {word!r} (got {type(plp).__name__}, "
                                    f"{n} word tokens): this server needs label_scoring=top_logprobs")
            scores.append(sum(_prompt_token_logprob(entry, word) for entry in plp[-n:]))
        top = max(scores)
        exp = [math.exp(x - top) for x in scores]
        return [e / sum(exp) for e in exp]

    async def _chain_one(self, post: PostInput, label: Label) -> tuple[str, int, int]:
        prompt = guided_reasoning_prompt(post, label) if self.chain_prompt == "guided" else reasoning_prompt(post)
        params = {"max_tokens": self.max_new_tokens, "stop": list(STOP_STRINGS)}
        data = await self.http.chat(self._body(post, prompt, **params))
        usage = data.get("usage") or {}
        return message_text(data), int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)

    # ---- the student ----------------------------------------------------------------------
    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        batch = list(batch)
        if not batch:
            return []
        t0 = time.perf_counter()
        got = self.loop.gather([self._label_one(p) for p in batch])
        ms = (time.perf_counter() - t0) * 1000
        return [
            self.label_prediction(probs, prompt_version=PROMPT_VERSION, prompt_tokens=n, label_ms=ms,
                                  extra={"batch_size": len(batch), "label_prompt_tokens": n, **extra})
            for probs, n, extra in got
        ]

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        batch = self.explain_inputs(batch, predictions)
        if not batch:
            return []
        t0 = time.perf_counter()
        got = self.loop.gather([self._chain_one(p, pr.label) for p, pr in zip(batch, predictions)])
        ms = (time.perf_counter() - t0) * 1000
        return [with_generated_chain(pred, text, n_prompt, n_gen, ms) for pred, (text, n_prompt, n_gen) in zip(predictions, got)]

    def predict(self, batch: Sequence[PostInput], *, chain: bool = True) -> list[Prediction]:
        return super().predict(batch, chain=chain and self.chain)

    def close(self) -> None:
        """Close the HTTP client and stop the private event loop."""
        if not self.loop.loop.is_closed():
            try:
                self.loop.run(self.http.aclose(), timeout=5)
            finally:
                self.loop.close()


__all__ = ["OpenAIStudent", "parse_target", "label_of_token", "label_probabilities", "CONSTRAINTS"]
