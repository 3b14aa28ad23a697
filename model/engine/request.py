"""What the engine tracks per post and per caller, as plain data (no torch): a :class:`Request`
per post with its :class:`Status`, a :class:`Job` per ``Engine.submit`` call, and the
:class:`EngineResult` a post ends with. The scheduler (:mod:`model.engine.scheduler`) decides
over these; the runner never sees them."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field


class Status(enum.Enum):
    """Where a request is: queued, holding a slot (its chain decoding), or done."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass
class EngineResult:
    """One post's result: label-token scores (``LABELS`` order), chain token ids and text."""

    index: int
    label_scores: list[float]
    prompt_tokens: int
    label_prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    latency_ms: float = 0.0  # admission -> finished


class Job:
    """One ``submit`` call: its requests (one per post, input order), results and future."""

    def __init__(self, plans: Sequence[Future], chain: bool, limit: int) -> None:
        self.chain = chain
        self.limit = limit
        self.requests = [Request(self, i, plan) for i, plan in enumerate(plans)]
        self.results: list[EngineResult | None] = [None] * len(self.requests)
        self.left = len(self.requests)
        self.done: Future = Future()

    def finish(self, request: Request, result: EngineResult, decode: Callable[[list[list[int]]], list[str]]) -> None:
        """Record ``request``'s result; the last one resolves the future (chain texts decoded in
        one call)."""
        request.status = Status.FINISHED
        self.results[request.index] = result
        self.left -= 1
        if self.left == 0:
            if self.chain:
                for r, text in zip(self.results, decode([r.tokens for r in self.results])):
                    r.text = text
            self.done.set_result(list(self.results))

    def fail(self, exc: BaseException) -> None:
        """Fail the whole call (once); its other requests are then dropped where they are."""
        for r in self.requests:
            if r.status is not Status.FINISHED:
                r.status = Status.FAILED
        if not self.done.done():
            self.done.set_exception(exc)

    @property
    def failed(self) -> bool:
        return self.done.done() and self.done.exception() is not None


@dataclass(eq=False)
class Request:
    """One post of a :class:`Job` in the engine.

    While it holds a ``slot``: ``length`` is the tokens in the cache when decoding starts,
    ``generated`` the host's count of tokens generated (the prefill wrote the first; every decode
    step adds one), ``asked`` the output columns already queued for the host, ``tokens`` those
    read back, ``checked`` how many of them the stop check has seen."""

    job: Job
    index: int
    plan: Future
    status: Status = Status.WAITING
    slot: int | None = None
    result: EngineResult | None = None
    t0: float = 0.0
    length: int = 0
    generated: int = 0
    asked: int = 0
    checked: int = 0
    tokens: list[int] = field(default_factory=list)

    @property
    def chain(self) -> bool:
        return self.job.chain

    @property
    def limit(self) -> int:
        return self.job.limit

    def start(self, slot: int, result: EngineResult, length: int, t0: float) -> None:
        """Admitted into ``slot`` with its chain's first token generated."""
        self.status, self.slot, self.result, self.length, self.t0 = Status.RUNNING, slot, result, length, t0
        self.generated, self.asked, self.checked, self.tokens = 1, 0, 0, []

    def advance(self, steps: int, width: int) -> tuple[int, int]:
        """``steps`` decode steps were launched: the output columns ``[a, n)`` they wrote for this
        row, now queued for the host (the table is ``width`` columns wide)."""
        a = self.asked
        self.generated = min(self.generated + steps, width)
        self.asked = self.generated
        return a, self.generated

    @property
    def live(self) -> bool:
        """Still wanted: its job has not failed."""
        return not self.job.done.done()

