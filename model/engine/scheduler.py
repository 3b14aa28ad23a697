"""The engine's decisions, and nothing else: which queued requests to admit now, which slot each
admitted chain takes, when a slot is free again, and the shape of the next decode chunk. Pure
Python over :class:`~model.engine.request.Request` s (no torch, no device): tested on its own
(tests/model/test_scheduler.py).

The rules (docs/engine.md, "How a post goes through"):

* labels-only requests hold no slot: every queued one is admitted at the next iteration, scored
  in the label rows plus the free slots as scratch (so they never wait behind chains);
* chain requests take free slots in arrival order; while chains decode, a new group is admitted
  only once ``admit_min`` slots (or as many as chains are queued) are free, so prefills come in
  groups rather than one post at a time;
* an admitted chain takes the lowest free slot (decode batches are the lowest ``nb`` slots);
* decode chunks run the lowest power of two of slots covering the highest busy one, against keys
  up to the longest row in flight plus the chunk, rounded up to ``kv_bucket``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .config import pow2, round_up
from .request import Request, Status


class Scheduler:
    """Admission and slot bookkeeping for ``slots`` decode slots and ``label_rows`` scratch rows."""

    def __init__(self, slots: int, label_rows: Iterable[int], admit_min: int | None = None) -> None:
        self.slots = int(slots)
        self.label_rows = list(label_rows)
        self.admit_min = admit_min or max(1, self.slots // 4)
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self.free: list[int] = list(range(self.slots))
        self._used: set[int] = set()
        #: admissions into a slot another request had used before
        self.refills = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, requests: Iterable[Request]) -> None:
        self.waiting.extend(requests)

    def schedule(self) -> list[Request]:
        """The queued requests to admit now, in arrival order (see the module docstring); the
        others stay queued. Slots are assigned later (:meth:`assign`), once the caller knows which
        of these still run."""
        free = len(self.free)
        chains = sum(1 for r in self.waiting if r.chain)
        chain_ok = free > 0 and (not self.running or free >= min(self.admit_min, chains))
        take: list[Request] = []
        keep: deque[Request] = deque()
        n_chain = 0
        while self.waiting:
            r = self.waiting.popleft()
            if not r.chain or (chain_ok and n_chain < free):
                take.append(r)
                n_chain += r.chain
            else:
                keep.append(r)
        self.waiting = keep
        return take

    def scratch_rows(self) -> list[int]:
        """Cache rows labels-only requests may use now: the label rows, then the free slots."""
        self.free.sort()
        return self.label_rows + self.free

    def assign(self, requests: list[Request]) -> list[int]:
        """The lowest free slots for ``requests`` (admitted chains, at most as many as are free),
        which now hold them as running."""
        self.free.sort()
        if len(requests) > len(self.free):
            raise ValueError(f"{len(requests)} chains for {len(self.free)} free slots")
        slots, self.free = self.free[: len(requests)], self.free[len(requests) :]
        self.refills += len(self._used.intersection(slots))
        self._used.update(slots)
        for r, s in zip(requests, slots):
            r.slot, r.status = s, Status.RUNNING
            self.running[s] = r
        return slots

    def holds(self, request: Request) -> bool:
        """Whether ``request`` still holds its slot (a slot freed earlier may hold another now)."""
        return request.slot is not None and self.running.get(request.slot) is request

    def finish(self, request: Request) -> None:
        """``request`` has left its slot (finished, or its job failed): the slot is free."""
        del self.running[request.slot]
        self.free.append(request.slot)

    def reset(self) -> list[Request]:
        """Every slot free again (after a failed iteration); returns the requests that held one."""
        held = list(self.running.values())
        self.running.clear()
        self.free = list(range(self.slots))
        return held

    def decode_shape(self, steps: int, max_len: int, kv_bucket: int) -> tuple[int, int]:
        """``(nb, lk)`` of the next chunk of ``steps`` decode steps: slots ``[0, nb)`` step
        together (free ones below ``nb`` too, ignored), attending to keys ``[0, lk)``."""
        nb = min(self.slots, pow2(max(self.running) + 1))
        longest = max(r.length + r.generated for r in self.running.values())
        return nb, min(max_len, round_up(longest + steps + 1, kv_bucket))
