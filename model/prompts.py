"""The prompts of the method, written for this project and versioned.

Every prediction and every teacher/assistant row stores ``PROMPT_VERSION``; change the
version whenever a prompt's wording changes, since trained students depend on it.

Three prompts, each in a post-level (MSC) and an aspect-level (MASC) variant:

* ``reasoning_prompt``: asks for the five-field chain (the teacher's first pass, the
  assistant's and the student's reasoning task);
* ``guided_reasoning_prompt``: the same with the gold/decided label given ("explain why this
  is labelled X"), used by the teacher's retry pass and by label-conditioned explanation;
* ``label_prompt``: asks for the label alone; students score its three continuations.
"""

from __future__ import annotations

from .types import CHAIN_FIELDS, Label, PostInput

PROMPT_VERSION = "mulcot-prompts/1"

_FORMAT = (
    "Answer in exactly this format, each field on its own line:\n"
    '"Text_analysis": "<what the text says and its sentiment>"\n'
    '"Image_analysis": "<what the image shows and its sentiment>"\n'
    '"Conflict_resolution": "<how to decide when text and image disagree>"\n'
    '"Final_conclusion": "<the integrated judgement>"\n'
    '"Prediction": <positive, neutral or negative>'
)

_ASPECT_RULES = (
    "Judge only the poster's sentiment toward the target, not the whole sentence. "
    "Objective or factual statements about the target are neutral. "
    "Negative includes irony and sarcasm."
)


def _post_block(post: PostInput) -> str:
    image = "An image is attached." if post.image is not None else "No image is attached."
    lines = [f"Text: {post.text}"]
    if post.aspect:
        lines.append(f"Target: {post.aspect}")
    lines.append(image)
    return "\n".join(lines)


def _task_line(post: PostInput) -> str:
    if post.aspect:
        return (
            f"Determine the sentiment (positive, neutral or negative) of this multimodal post "
            f"toward the target '{post.aspect}'. {_ASPECT_RULES}"
        )
    return "Determine the overall sentiment (positive, neutral or negative) of this multimodal post."


def reasoning_prompt(post: PostInput) -> str:
    """The chain-of-thought prompt (no label given)."""
    return f"{_task_line(post)}\n\n{_post_block(post)}\n\n{_FORMAT}"


def guided_reasoning_prompt(post: PostInput, label: Label) -> str:
    """Chain prompt with the label given: explain why the post is labelled ``label``."""
    return (
        f"{_task_line(post)}\n\n{_post_block(post)}\n\n"
        f"The correct sentiment is {label.value}. Explain step by step why, then give it as the prediction.\n\n"
        f"{_FORMAT}"
    )


def label_prompt(post: PostInput) -> str:
    """Short classification prompt; the answer is one word."""
    return f"{_task_line(post)}\n\n{_post_block(post)}\n\nAnswer with one word: positive, neutral or negative."


#: The continuations scored for the label prompt, in ``LABELS`` order.
LABEL_WORDS: tuple[str, ...] = tuple(l.value for l in (Label.POSITIVE, Label.NEUTRAL, Label.NEGATIVE))

__all__ = [
    "PROMPT_VERSION",
    "CHAIN_FIELDS",
    "LABEL_WORDS",
    "reasoning_prompt",
    "guided_reasoning_prompt",
    "label_prompt",
]
