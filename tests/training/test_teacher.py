"""Teacher stage against a local fake OpenAI-compatible endpoint.

No teacher MLLM is reachable from this machine, so these tests start an aiohttp server on
127.0.0.1 (a free port) that speaks the same wire format as vLLM/SGLang/OpenAI
``POST /v1/chat/completions`` (messages with ``image_url`` base64 data URLs in, ``choices`` +
``usage`` out). It checks every request's shape and decodes the image, answers wrongly on the
label-free pass for some posts (so the label-guided retry must happen), and fails some requests
with 429/500 (so retries with backoff must happen).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.support.mulcot_train_synth import teacher_chain, write_dataset
from training.data import load_examples
from training.mulcot.teacher import EndpointTeacher, RateLimiter, done_ids, run_teacher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEndpoint:
    """An OpenAI-compatible chat endpoint in a background thread."""

    def __init__(self, *, wrong_first: set[str] = frozenset(), never_right: set[str] = frozenset(),
                 flaky_every: int = 0, down: bool = False):
        self.port = _free_port()
        self.requests: list[dict] = []
        self.wrong_first = set(wrong_first)
        self.never_right = set(never_right)
        self.flaky_every = flaky_every
        self.down = down
        self.errors_sent = 0
        self.images_seen: list[tuple[int, int]] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, request):
        from aiohttp import web

        body = await request.json()
        n = len(self.requests) + 1
        self.requests.append(body)
        if self.down:
            self.errors_sent += 1
            return web.json_response({"error": "down"}, status=503)
        if self.flaky_every and n % self.flaky_every == 0:
            self.errors_sent += 1
            status = 429 if (n // self.flaky_every) % 2 else 500
            return web.json_response({"error": {"message": "busy"}}, status=status, headers={"Retry-After": "0"})
        assert request.headers.get("Authorization") == "Bearer test-key"
        assert body["model"] == "fake-72b"
        (msg,) = body["messages"]
        assert msg["role"] == "user"
        parts = {p["type"]: p for p in msg["content"]}
        text = parts["text"]["text"]
        if "image_url" in parts:
            url = parts["image_url"]["image_url"]["url"]
            assert url.startswith("data:image/jpeg;base64,")
            im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            im.load()
            self.images_seen.append(im.size)
        post_text = re.search(r"Text: (.*)", text).group(1)
        aspect = re.search(r"Target: (.*)", text).group(1)
        gold = re.search(r"The correct sentiment is (\w+)", text)
        truth = next(l for l, c in self.truths.items() if c == (post_text, aspect))
        label = truth[1]
        if gold is None and post_text in self.wrong_first or post_text in self.never_right:
            label = {"positive": "negative", "neutral": "positive", "negative": "neutral"}[label]
        answer = "Sure, here is my analysis.\n" + teacher_chain(label, aspect)
        return web.json_response({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
        })

    def start(self, rows: list[dict]):
        from aiohttp import web

        self.truths = {(r["id"], r["label"]): (r["text"], r["aspect"]) for r in rows}

        async def main():
            app = web.Application(client_max_size=16 * 2**20)
            app.router.add_post("/v1/chat/completions", self.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            self._stop = asyncio.Event()
            await self._stop.wait()
            await runner.cleanup()

        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def dataset(tmp_path: Path):
    path = write_dataset(tmp_path / "d", n=9, chains=False, text_only_every=4)
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    return path, rows


def _factory(server, **kw):
    return lambda: EndpointTeacher(server.base_url, "fake-72b", api_key="test-key", max_concurrency=3,
                                   backoff_s=0.01, price_prompt_per_mtok=1.0, price_completion_per_mtok=2.0, **kw)


def test_teacher_endpoint_free_guided_retries_and_resume(dataset, tmp_path: Path):
    path, rows = dataset
    # rows 1 and 2 are wrong on the free pass (fixed by the guided retry); row 5 is always wrong
    server = FakeEndpoint(wrong_first={rows[1]["text"], rows[2]["text"]}, never_right={rows[5]["text"]},
                          flaky_every=5).start(rows)
    try:
        out = tmp_path / "teacher" / "chains.jsonl"
        examples = load_examples(path)
        s1 = run_teacher(examples[:6], _factory(server), out, max_guided=2)
        assert s1["processed"] == 6 and s1["kept"] == 5 and s1["kept_guided"] == 2 and s1["failed"] == 1
        # 6 free + 2 guided (fixed) + 2 guided (never right) answers = 10 answered requests + retried errors
        assert len(server.requests) == 10 + server.errors_sent
        assert server.errors_sent >= 2 and s1["usage"]["retries"] == server.errors_sent
        assert s1["usage"]["prompt_tokens"] == 100 * 10 and s1["usage"]["completion_tokens"] == 40 * 10
        assert s1["usage"]["cost_usd"] == pytest.approx((1000 * 1.0 + 400 * 2.0) / 1e6)
        # images were sent for the posts that have them (row 0 and 4 are text-only)
        # rows 0 and 4 are text-only; answered requests for rows 1, 2, 3, 5: 2 + 2 + 1 + 3
        assert [bool(r["image"]) for r in rows[:6]] == [False, True, True, True, False, True]
        assert len(server.images_seen) == 8
        assert all(min(size) > 0 for size in server.images_seen)

        got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert set(got) == {r["id"] for r in rows[:6]}
        assert got[rows[0]["id"]]["stage"] == "free" and got[rows[0]["id"]]["attempts"] == 1
        assert got[rows[1]["id"]]["stage"] == "guided" and got[rows[1]["id"]]["attempts"] == 2
        bad = got[rows[5]["id"]]
        assert bad["stage"] == "failed" and not bad["keep"] and bad["teacher_cot"] is None and bad["attempts"] == 3
        for r in got.values():
            assert r["prompt_version"] and r["model"] == "fake-72b" and r["raw"].startswith("Sure")
            assert set(r["parsed"]) == {"Text_analysis", "Image_analysis", "Conflict_resolution",
                                        "Final_conclusion", "Prediction"}
            if r["keep"]:
                assert r["prediction"] == r["label"] and r["parsed_ok"]

        # The output is itself a dataset; images resolve relative to it.
        loaded = {e.id: e for e in load_examples(out)}
        assert loaded[rows[1]["id"]].teacher_cot and loaded[rows[1]["id"]].load_image() is not None

        # Resume: the 6 done posts are skipped; only the 3 new ones are asked (free pass right).
        n_before = len(server.requests) - server.errors_sent
        s2 = run_teacher(examples, _factory(server), out, max_guided=2)
        assert s2["skipped_done"] == 6 and s2["processed"] == 3 and s2["kept"] == 3
        assert (len(server.requests) - server.errors_sent) - n_before == 3
        assert done_ids(out) == {r["id"] for r in rows}
        assert len(out.read_text().splitlines()) == 9
    finally:
        server.stop()


def test_teacher_endpoint_down_writes_nothing_and_gives_up(dataset, tmp_path: Path):
    path, rows = dataset
    server = FakeEndpoint(down=True).start(rows)
    try:
        out = tmp_path / "chains.jsonl"
        s = run_teacher(load_examples(path)[:2], _factory(server, max_retries=2), out, max_guided=1)
        assert s["errors"] == 2 and s["processed"] == 0
        # 2 posts x (free + 1 guided) x 3 tries each
        assert len(server.requests) == 2 * 2 * 3
        assert not out.exists() or out.read_text() == ""
    finally:
        server.stop()


def test_rate_limiter_spaces_requests():
    async def main():
        lim = RateLimiter(20.0)  # 50 ms apart
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(lim.wait() for _ in range(5)))
        return loop.time() - t0

    assert asyncio.run(main()) >= 0.19


@pytest.mark.data
def test_teacher_endpoint_on_real_posts(data_dir: Path, tmp_path: Path):
    """Three real Twitter-2015 train posts (real JPEGs) through the fake endpoint."""
    examples = load_examples(data_dir / "t15" / "train.jsonl", limit=3)
    rows = [{"id": ex.id, "label": ex.label.value, "text": ex.text, "aspect": ex.aspect} for ex in examples]
    server = FakeEndpoint(wrong_first={examples[0].text}).start(rows)
    try:
        out = tmp_path / "chains.jsonl"
        s = run_teacher(examples, _factory(server), out, max_guided=1)
        same_text = sum(ex.text == examples[0].text for ex in examples)  # t15 repeats a tweet per aspect
        assert s["kept"] == 3 and s["kept_guided"] == same_text
        assert len(server.images_seen) == 3 + same_text and all(max(sz) <= 640 for sz in server.images_seen)
        loaded = load_examples(out)
        assert all(ex.teacher_cot and ex.load_image() is not None for ex in loaded)
    finally:
        server.stop()


def test_cli_teacher_command_against_fake_endpoint(dataset, tmp_path: Path, monkeypatch):
    from click.testing import CliRunner

    from training.cli import distill

    path, rows = dataset
    server = FakeEndpoint(wrong_first={rows[2]["text"]}).start(rows)
    monkeypatch.setenv("FAKE_KEY", "test-key")
    try:
        out = tmp_path / "cli.jsonl"
        args = ["teacher", "--data", str(path), "--out", str(out), "--base-url", server.base_url,
                "--model", "fake-72b", "--api-key-env", "FAKE_KEY", "--limit", "4", "--max-guided", "1"]
        res = CliRunner().invoke(distill, args)
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output[res.output.index("{"):])
        assert summary["kept"] == 4 and summary["kept_guided"] == 1 and summary["usage"]["requests"] == 5
        res = CliRunner().invoke(distill, args)
        assert json.loads(res.output[res.output.index("{"):])["skipped_done"] == 4
    finally:
        server.stop()


def test_hf_teacher_gathers_concurrent_prompts_into_batches(dataset, tmp_path: Path):
    """The in-process backend batches concurrent requests (a recording generate_raw stands in for
    the model here; the real tiny model runs through it in test_recipe_cli's end-to-end run)."""
    from training.mulcot.teacher import HFTeacher

    path, rows = dataset
    by_text = {r["text"]: r for r in rows}

    class Recorder:
        def __init__(self):
            self.batches = []

        def generate_raw(self, posts, prompts, *, stop_at_prediction, max_new_tokens):
            self.batches.append(len(prompts))
            out = []
            for p in prompts:
                text = re.search(r"Text: (.*)", p).group(1)
                row = by_text[text]
                out.append(teacher_chain(row["label"], row["aspect"]))
            return out, [10] * len(prompts), [5] * len(prompts)

    rec = Recorder()
    s = run_teacher(load_examples(path), lambda: HFTeacher("rec", student=rec, batch_size=4), tmp_path / "o.jsonl")
    assert s["kept"] == 9 and s["usage"]["requests"] == 9 and s["usage"]["completion_tokens"] == 45
    assert sum(rec.batches) == 9 and max(rec.batches) == 4 and len(rec.batches) <= 4
