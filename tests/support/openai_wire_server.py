"""A local HTTP server that speaks the OpenAI ``/v1/chat/completions`` wire format the way vLLM
and SGLang do, including ``logprobs`` / ``top_logprobs``, ``stop`` strings, ``usage`` and vLLM's
constrained ``structured_outputs: {"choice": [...]}`` (and the older ``guided_choice``).

No model server can run on this machine, so the ``openai:`` student is tested against this one.
Its "model" is a keyword rule on the post text (``Text: ...`` line of the prompt): it is not a
sentiment model, it stands in for one so the client side can be checked exactly. It checks
every request's shape (model name, bearer key, message parts, the image as a decodable base64
data URL, ``top_logprobs <= 20``) and answers 400/401 like a real server when they are wrong.

Knobs: ``fail`` - HTTP statuses to answer the next requests with (``Retry-After: 0``);
``down`` - answer every request 503 while True (an outage);
``hide_labels`` - texts whose answer position lists no label token (forces the constrained
fallback); ``partial`` - texts whose top tokens list only the winning label and one other;
``ignore_constraint`` - texts for which the server ignores the constraint fields (as vLLM does
with fields it does not know) and answers in a sentence with no label token among its logprobs;
``contrary`` - texts whose chain argues for another label than the label request's answer.

vLLM's ``prompt_logprobs`` with ``continue_final_message`` (an assistant turn to continue) is
served too: the "tokenizer" splits the prompt on whitespace and an answer prefix into 4-character
pieces, and the label words' pieces carry log-probabilities that add up to log(0.7) for the rule's
label, log(0.2) and log(0.1) for the other two (see :func:`word_logprob`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import re
import socket
import threading

from PIL import Image

POSITIVE = ("happy", "love", "great", "sunny", "win", "cake")
NEGATIVE = ("sad", "hate", "broken", "rain", "traffic", "cracked")
LABELS = ("positive", "neutral", "negative")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rule_label(text: str) -> str:
    t = text.lower()
    if any(w in t for w in POSITIVE):
        return "positive"
    if any(w in t for w in NEGATIVE):
        return "negative"
    return "neutral"


def top_tokens(label: str) -> list[tuple[str, float]]:
    """The answer position's top tokens for a post the rule labels ``label``: the label word in
    two spellings, the two others, and a few non-label tokens (probabilities, not logs)."""
    others = [l for l in LABELS if l != label]
    return [(label, 0.55), (" " + label.capitalize(), 0.15), (others[0], 0.12), (others[1][:3], 0.08),
            ("The", 0.05), ("**", 0.03), ("I", 0.02)]


def word_logprob(label: str, word: str) -> float:
    """Total log-probability of ``word`` as the answer for a post the rule labels ``label``."""
    others = [l for l in LABELS if l != label]
    return math.log({label: 0.7, others[0]: 0.2, others[1]: 0.1}.get(word, 0.001))


def pieces(text: str) -> list[str]:
    return [text[i:i + 4] for i in range(0, len(text), 4)]


def chain_text(label: str, has_image: bool, image_size: tuple[int, int] | None) -> str:
    img = f"an image of {image_size[0]}x{image_size[1]} pixels was attached" if has_image else "no image"
    return (
        f'"Text_analysis": "The wording reads {label}."\n'
        f'"Image_analysis": "The fake model saw {img}."\n'
        f'"Conflict_resolution": "Nothing to resolve."\n'
        f'"Final_conclusion": "Overall the post is {label}."\n'
        f'"Prediction": {label}'
    )


class WireServer:
    """The server in a background thread; ``base_url`` ends in ``/v1``."""

    def __init__(self, *, model: str = "fake/mulcot-student", api_key: str | None = None) -> None:
        self.port = _free_port()
        self.model = model
        self.api_key = api_key
        self.requests: list[dict] = []
        self.fail: list[int] = []
        self.down = False
        self.errors_sent = 0
        self.hide_labels: set[str] = set()
        self.partial: set[str] = set()
        self.contrary: set[str] = set()
        self.ignore_constraint: set[str] = set()
        self.images_seen: list[tuple[int, int]] = []
        self.delay_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- handlers -----------------------------------------------------------------------
    async def models(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def chat(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        body = await request.json()
        with self._lock:
            self.requests.append(body)
            status = self.fail.pop(0) if self.fail else (503 if self.down else None)
        if status:
            self.errors_sent += 1
            return web.json_response({"error": {"message": "busy", "code": status}}, status=status,
                                     headers={"Retry-After": "0"})
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad api key"}}, status=401)
        if body.get("model") != self.model:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not served"}}, status=404)
        try:
            msg, *prefill = body["messages"]
            assert msg["role"] == "user"
            if prefill:  # vLLM: continue the assistant's answer
                (answer,) = prefill
                assert answer["role"] == "assistant" and isinstance(answer["content"], str)
                assert body.get("continue_final_message") is True and body.get("add_generation_prompt") is False
            parts = msg["content"]
            assert [p["type"] for p in parts] in (["text"], ["image_url", "text"])
            prompt = parts[-1]["text"]
            size = None
            if parts[0]["type"] == "image_url":
                url = parts[0]["image_url"]["url"]
                assert url.startswith("data:image/jpeg;base64,")
                im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                im.load()
                size = im.size
                self.images_seen.append(size)
            k = int(body.get("top_logprobs") or 0)
            assert 0 <= k <= 20, "top_logprobs must be in [0, 20]"
            assert not k or body.get("logprobs") is True
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": {"message": f"bad request: {exc}"}}, status=400)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.json_response(self._answer(body, prompt, size, prefill[0]["content"] if prefill else None))
        finally:
            self.in_flight -= 1

    def _answer(self, body: dict, prompt: str, size: tuple[int, int] | None, prefix: str | None = None) -> dict:
        m = re.search(r"^Text: (.*)$", prompt, re.M)
        text = m.group(1) if m else ""
        label = rule_label(text)
        choice = (body.get("structured_outputs") or {}).get("choice") or body.get("guided_choice")
        if text in self.ignore_constraint and choice:
            top = [("It", 0.7), ("The", 0.3)]
            out = f"It is {label}."
            return {"id": "x", "object": "chat.completion", "model": self.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop",
                                 "logprobs": {"content": [{"token": "It", "logprob": math.log(0.7), "top_logprobs": [
                                     {"token": t, "logprob": math.log(p)} for t, p in top]}]}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
        max_tokens = int(body.get("max_tokens") or 512)
        top = top_tokens(label)
        if text in self.partial:
            drop = [l for l in LABELS if l != label][1][:3]
            top = [t for t in top if t[0].strip().lower()[:3] != drop]
        if text in self.hide_labels and not choice:
            top = [("The", 0.6), ("I", 0.3), ("**", 0.1)]
        if choice:
            out = label if label in choice else choice[0]
        elif max_tokens == 1:
            out = top[0][0]
        else:
            own = {"positive": "negative", "neutral": "positive", "negative": "neutral"}[label] \
                if text in self.contrary else label
            out = chain_text(own, size is not None, size)
            cut = [out.find(s) for s in (body.get("stop") or []) if s and out.find(s) >= 0]
            out = out[: min(cut)] if cut else out
        completion_tokens = max(1, len(out.split()))
        if max_tokens < completion_tokens:
            out = " ".join(out.split()[:max_tokens])
            completion_tokens = max_tokens
        choice_obj: dict = {"index": 0, "message": {"role": "assistant", "content": out},
                            "finish_reason": "stop"}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            first = top[0] if not choice else (out, dict(top).get(out, 0.5))
            choice_obj["logprobs"] = {"content": [{
                "token": first[0], "logprob": math.log(first[1]), "bytes": list(first[0].encode()),
                "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in top[:k]],
            }]}
        n_prompt = len(prompt.split()) + (64 if size else 0)
        extra: dict = {}
        if prefix is not None:
            n_prompt += len(pieces(prefix))
            if body.get("prompt_logprobs") is not None:
                word = pieces(prefix)
                each = word_logprob(label, prefix) / len(word)
                plp: list = [None] + [{"7": {"logprob": -1.0, "rank": 1, "decoded_token": "x"}}] * (n_prompt - 1 - len(word))
                plp += [{str(100 + i): {"logprob": each, "rank": 1, "decoded_token": w}} for i, w in enumerate(word)]
                extra["prompt_logprobs"] = plp
        return {**extra,
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "model": self.model,
            "choices": [choice_obj],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": completion_tokens,
                      "total_tokens": n_prompt + completion_tokens},
        }

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> WireServer:
        from aiohttp import web

        async def main() -> None:
            app = web.Application(client_max_size=16 * 2**20)
            app.router.add_post("/v1/chat/completions", self.chat)
            app.router.add_get("/v1/models", self.models)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "wire server did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


__all__ = ["WireServer", "rule_label", "top_tokens", "chain_text", "LABELS"]
