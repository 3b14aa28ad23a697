"""The batch step in-process: model errors are isolated per post, the loop is not blocked."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence

from model import BaseStudent, PostInput, Prediction, load_student
from stream.pipeline import BatchProcessor, InRecord
from stream.protocol import ErrorCode
from tests.support.stream_helpers import png_b64


class FailingStudent(BaseStudent):
    """The noop student, except it raises for posts whose text contains 'boom' (a model
    failing on particular inputs), and records which thread it ran on."""

    name, version = "failing", "1"

    def __init__(self) -> None:
        self.inner = load_student("noop")
        self.threads: set[str] = set()

    def predict(self, batch: Sequence[PostInput], *, chain: bool = True) -> list[Prediction]:
        self.threads.add(threading.current_thread().name)
        if any("boom" in p.text for p in batch):
            raise RuntimeError("CUDA error: device-side assert (simulated by this test's student)")
        return self.inner.predict(batch, chain=chain)


def _rec(i: int, body: dict) -> InRecord:
    return InRecord(json.dumps(body).encode(), str(i).encode(), "posts", 0, i, int(time.time() * 1000))


def test_model_error_isolated_per_post() -> None:
    student = FailingStudent()
    proc = BatchProcessor(student)
    recs = [_rec(i, {"id": f"p{i}", "text": "boom" if i in (2, 5) else f"fine {i}", "image_b64": png_b64()}) for i in range(8)]
    out = asyncio.run(proc.process(recs))
    assert sorted(r.result.id for r in out.results) == [f"p{i}" for i in (0, 1, 3, 4, 6, 7)]
    assert sorted(d.dead.post_id for d in out.dead) == ["p2", "p5"]
    assert all(d.dead.error is ErrorCode.MODEL_ERROR and "CUDA" in d.dead.message for d in out.dead)
    assert "MainThread" not in student.threads  # the model ran off the event loop


def test_event_loop_keeps_running_during_inference() -> None:
    class Slow(BaseStudent):
        name, version = "slow", "1"

        def predict(self, batch, *, chain=True):  # type: ignore[no-untyped-def]
            time.sleep(1.0)  # a long GPU batch
            return load_student("noop").predict(batch, chain=chain)

    async def run() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        t = asyncio.create_task(ticker())
        out = await BatchProcessor(Slow()).process([_rec(0, {"id": "a", "text": "x"})])
        t.cancel()
        assert len(out.results) == 1
        return ticks

    assert asyncio.run(run()) >= 10  # ~20 ticks of the loop while the model slept 1 s


def test_labels_only_mode() -> None:
    out = asyncio.run(BatchProcessor(load_student("noop"), chain=False).process([_rec(0, {"id": "a", "text": "x"})]))
    assert out.results[0].result.chain is None


def test_label_first_publishes_labels_before_chains() -> None:
    order: list[str] = []

    class Recording(BaseStudent):
        name, version = "rec", "1"

        def __init__(self) -> None:
            self.inner = load_student("noop")

        def classify(self, batch):  # type: ignore[no-untyped-def]
            order.append("classify")
            return self.inner.classify(batch)

        def explain(self, batch, preds):  # type: ignore[no-untyped-def]
            order.append("explain")
            if any("boom" in p.text for p in batch):
                raise RuntimeError("chain writer failed")
            return self.inner.explain(batch, preds)

    async def on_labels(early) -> None:  # type: ignore[no-untyped-def]
        order.append(f"labels:{len(early)}")
        assert all(r.result.chain is None for r in early)

    recs = [_rec(i, {"id": f"p{i}", "text": "boom" if i == 3 else f"ok {i}"}) for i in range(5)]
    out = asyncio.run(BatchProcessor(Recording()).process(recs, on_labels=on_labels))
    assert order[:2] == ["classify", "labels:5"] and order[2] == "explain"
    assert sorted(r.result.id for r in out.results) == ["p0", "p1", "p2", "p4"]
    assert all(r.result.chain is not None and r.result.chain.prediction == r.result.label for r in out.results)
    assert [d.dead.post_id for d in out.dead] == ["p3"] and "label already published" in out.dead[0].dead.message
    assert len(out.early) == 5


def test_lone_surrogate_is_a_schema_error_naming_the_field() -> None:
    proc = BatchProcessor(load_student("noop"))
    recs = [
        InRecord(b'{"id": "s1", "text": "bad \\ud800 here"}', b"s1", "posts", 0, 0, None),
        InRecord(b'{"id": "\\udfff", "text": "fine", "metadata": {"k": "\\ud800"}}', b"s2", "posts", 0, 1, None),
        InRecord(b'{"id": "s3", "text": "fine \\ud83d\\ude00"}', b"s3", "posts", 0, 2, None),  # a valid pair
        InRecord(b'{"id": "s4", "text": ', b"s4", "posts", 0, 3, None),
    ]
    out = asyncio.run(proc.process(recs))
    dead = {d.dead.source.offset: d for d in out.dead}
    assert dead[0].dead.error is ErrorCode.SCHEMA and dead[0].dead.post_id == "s1"
    assert dead[0].dead.message.startswith("text: contains a lone UTF-16 surrogate")
    assert dead[1].dead.error is ErrorCode.SCHEMA and dead[1].dead.post_id is None and dead[1].key == b"s2"
    assert "id: contains" in dead[1].dead.message and "metadata.k: contains" in dead[1].dead.message
    assert [r.result.id for r in out.results] == ["s3"]
    assert dead[3].dead.error is ErrorCode.INVALID_JSON
