"""Where a chain ends, read on the host from its token ids: end-of-turn, the ``Prediction`` stop
key (:data:`model.chain.STOP_STRINGS`, ending inside the last token, as transformers'
``stop_strings`` does) or the token budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..chain import STOP_STRINGS


class StopChecker:
    """Stop decisions for one tokenizer (token texts are decoded once and cached)."""

    def __init__(self, tokenizer: Any, eos: Iterable[int], *, stop_strings: bool = True) -> None:
        self.tokenizer = tokenizer
        self.eos = set(eos)
        self.stop_strings = stop_strings
        self._text: dict[int, str] = {}
        self._ends = {s[-1] for s in STOP_STRINGS}  # a stop string ends inside a token holding its last char

    def text(self, t: int) -> str:
        s = self._text.get(t)
        if s is None:
            s = self._text[t] = self.tokenizer.decode([t])
        return s

    def _ends_stop_string(self, toks: list[int], i: int) -> bool:
        if not any(c in self.text(toks[i]) for c in self._ends):
            return False
        tail = "".join(self.text(t) for t in toks[max(0, i - 16) : i + 1])
        before = tail[: len(tail) - len(self.text(toks[i]))]
        return any(s in tail and s not in before for s in STOP_STRINGS)

    def index(self, toks: list[int], start: int, limit: int) -> int | None:
        """Index of the token that ends the chain among ``toks[start:]``, or None."""
        for i in range(start, len(toks)):
            if toks[i] in self.eos or (self.stop_strings and self._ends_stop_string(toks, i)) or i + 1 >= limit:
                return i
        return None
