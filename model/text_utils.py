"""Small text helpers shared by backends."""

from __future__ import annotations


def clip_words(text: str, max_words: int) -> str:
    """The first ``max_words`` words of ``text``; an ellipsis marks a cut."""
    words = (text or "").split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]).rstrip(",;:") + " ..."
