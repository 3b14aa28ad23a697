"""The engine's scheduler on its own: pure admit / slot / finish decisions over requests, with no
model, no device and no torch (the module must not import it)."""

from __future__ import annotations

import ast
from concurrent.futures import Future
from pathlib import Path

import pytest

from model.engine.config import pow2, round_up
from model.engine.request import EngineResult, Job, Status
from model.engine.scheduler import Scheduler


def _job(n: int, *, chain: bool = True, limit: int = 16) -> Job:
    return Job([Future() for _ in range(n)], chain, limit)


def _start(sched: Scheduler, requests, length: int = 10):
    slots = sched.assign(requests)
    for r, s in zip(requests, slots):
        r.start(s, EngineResult(r.index, [0.0, 0.0, 0.0], length, length), length, 0.0)
    return slots


def test_scheduler_modules_import_no_torch() -> None:
    root = Path(__file__).resolve().parents[2] / "model" / "engine"
    for name in ("scheduler.py", "request.py", "config.py"):
        tree = ast.parse((root / name).read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] == "torch" for m in mods), (name, mods)


def test_idle_engine_admits_every_chain_that_fits_in_arrival_order() -> None:
    sched = Scheduler(4, label_rows=[4], admit_min=2)
    a, b = _job(3), _job(3)
    sched.add(a.requests + b.requests)
    take = sched.schedule()
    assert take == a.requests + b.requests[:1]  # 4 free slots, nothing decoding
    assert list(sched.waiting) == b.requests[1:]
    assert _start(sched, take) == [0, 1, 2, 3]
    assert all(r.status is Status.RUNNING for r in take)
    assert sched.free == [] and sorted(sched.running) == [0, 1, 2, 3]


def test_labels_only_are_admitted_while_every_slot_holds_a_chain() -> None:
    sched = Scheduler(2, label_rows=[2], admit_min=1)
    chains, labels = _job(2), _job(3, chain=False)
    sched.add(chains.requests)
    _start(sched, sched.schedule())
    sched.add(labels.requests)
    assert sched.schedule() == labels.requests  # no free slot, still admitted
    assert sched.scratch_rows() == [2]  # the label row only: both slots hold chains


def test_while_chains_decode_a_group_waits_for_admit_min_free_slots() -> None:
    sched = Scheduler(4, label_rows=[4], admit_min=2)
    first = _job(4)
    sched.add(first.requests)
    _start(sched, sched.schedule())
    later = _job(3)
    sched.add(later.requests)
    sched.finish(first.requests[2])  # one free slot: below admit_min with 3 chains queued
    assert sched.schedule() == []
    sched.finish(first.requests[0])  # two free
    take = sched.schedule()
    assert take == later.requests[:2]
    assert _start(sched, take) == [0, 2]  # the lowest free slots
    assert sched.refills == 2


def test_few_queued_chains_need_only_as_many_free_slots() -> None:
    sched = Scheduler(8, label_rows=[8], admit_min=4)
    first = _job(8)
    sched.add(first.requests)
    _start(sched, sched.schedule())
    one = _job(1)
    sched.add(one.requests)
    sched.finish(first.requests[5])
    assert sched.schedule() == one.requests  # min(admit_min, queued chains) = 1


def test_scratch_rows_are_label_rows_then_free_slots_sorted() -> None:
    sched = Scheduler(4, label_rows=[4, 5])
    job = _job(4)
    sched.add(job.requests)
    _start(sched, sched.schedule())
    sched.finish(job.requests[3])
    sched.finish(job.requests[1])
    assert sched.scratch_rows() == [4, 5, 1, 3]


def test_holds_tells_a_refilled_slot_from_its_former_request() -> None:
    sched = Scheduler(1, label_rows=[1])
    a, b = _job(1), _job(1)
    sched.add(a.requests + b.requests)
    _start(sched, sched.schedule())
    sched.finish(a.requests[0])
    _start(sched, sched.schedule())
    assert not sched.holds(a.requests[0]) and sched.holds(b.requests[0])
    assert sched.refills == 1


def test_decode_shape_covers_the_highest_busy_slot_and_the_longest_row() -> None:
    sched = Scheduler(16, label_rows=[16])
    job = _job(6)
    sched.add(job.requests)
    _start(sched, sched.schedule(), length=100)
    for s in (0, 1, 2, 3):
        sched.finish(job.requests[s])
    r4 = job.requests[4]
    r4.advance(3, width=40)  # 1 + 3 generated
    nb, lk = sched.decode_shape(4, max_len=512, kv_bucket=64)
    assert nb == 8  # slot 5 busy -> the power of two above it
    assert lk == round_up(100 + 4 + 4 + 1, 64) == 128
    assert sched.decode_shape(4, max_len=100, kv_bucket=64)[1] == 100  # capped at a slot's length


def test_advance_reports_the_columns_each_chunk_wrote() -> None:
    sched = Scheduler(1, label_rows=[1])
    job = _job(1)
    sched.add(job.requests)
    (r,) = sched.schedule()
    _start(sched, [r])
    assert r.advance(4, width=7) == (0, 5)  # the prefill's token plus 4 steps
    assert r.advance(4, width=7) == (5, 7)  # capped at the table's width
    assert r.advance(4, width=7) == (7, 7)


def test_reset_frees_every_slot_and_returns_what_held_one() -> None:
    sched = Scheduler(3, label_rows=[3])
    job = _job(2)
    sched.add(job.requests)
    _start(sched, sched.schedule())
    assert sched.reset() == job.requests
    assert sched.free == [0, 1, 2] and sched.running == {}


def test_assigning_more_chains_than_free_slots_is_refused() -> None:
    sched = Scheduler(1, label_rows=[1])
    with pytest.raises(ValueError):
        sched.assign(_job(2).requests)


def test_job_resolves_once_every_request_finished_and_fails_once() -> None:
    job = _job(2, chain=False)
    for r in job.requests:
        job.finish(r, EngineResult(r.index, [1.0, 0.0, 0.0], 3, 3), lambda rows: [""] * len(rows))
    assert [x.index for x in job.done.result()] == [0, 1]
    failed = _job(2)
    failed.fail(RuntimeError("boom"))
    failed.fail(RuntimeError("again"))
    assert str(failed.done.exception()) == "boom"
    assert not failed.requests[0].live and failed.requests[1].status is Status.FAILED


def test_shape_helpers() -> None:
    assert [pow2(n) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
    assert round_up(1, 64) == 64 and round_up(64, 64) == 64 and round_up(65, 64) == 128
