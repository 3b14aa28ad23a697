"""Reading five-field reasoning chains out of what models really write.

Handles: JSON objects, ``"Key": "value"`` lines (the teacher's format), unquoted keys,
markdown bold keys (``**Text analysis:**``), headings, spaces/hyphens instead of
underscores, any letter case, text before or after the chain, and truncated output (the
fields that are there are kept, a key cut off at the very end is dropped; the chain is
flagged ``parsed=False``). It never raises on
any input string.

And what every student that generates a chain does with it: stop at the ``Prediction`` key
(:data:`STOP_STRINGS`), write the published label in (:func:`chain_with_label`), and record what
the model's own text argued for (:func:`with_generated_chain`).
"""

from __future__ import annotations

import json
import re

from .types import CHAIN_FIELDS, Label, Prediction, ReasoningChain

_ATTR = {
    "Text_analysis": "text_analysis",
    "Image_analysis": "image_analysis",
    "Conflict_resolution": "conflict_resolution",
    "Final_conclusion": "final_conclusion",
    "Prediction": "prediction",
}

_SEP = r"[\s_\-]*"
# Full key names may appear anywhere (JSON on one line); short aliases only at a line start.
_FULL = {
    "Text_analysis": rf"text{_SEP}analysis",
    "Image_analysis": rf"image{_SEP}analysis",
    "Conflict_resolution": rf"conflict{_SEP}resolution",
    "Final_conclusion": rf"final{_SEP}conclusion",
    "Prediction": r"prediction",
}
_SHORT = {
    "Text_analysis": r"text",
    "Image_analysis": r"image",
    "Conflict_resolution": r"conflict",
    "Final_conclusion": r"conclusion",
    "Prediction": r"(?:sentiment|label|final[ _]answer)",
}
# Markup before a key; a hyphen only as a bullet (after whitespace or at the start), so a value
# that ends in "-" keeps it.
_OPEN = r"(?:[\"'`*#>\s{,]|(?<!\S)-)*"
_CLOSE = r"[\"'`*]*(?:[ \t]*[:=]|[ \t]+[-\u2013][ \t]|[ \t]*\r?\n)[\"'`*\s]*"


def _key_regex() -> re.Pattern[str]:
    alts = []
    for name, pat in _FULL.items():
        alts.append(rf"(?P<{name}>(?<![A-Za-z]){pat}(?![A-Za-z]))")
    full = "|".join(alts)
    short = "|".join(rf"(?P<{name}_s>{pat})" for name, pat in _SHORT.items())
    return re.compile(
        rf"(?:{_OPEN}(?:{full}){_CLOSE})|(?:(?:^|\n)[\"'`*#>\s\-]*(?:{short})[\"'`*\s]*:[\"'`*\s]*)",
        re.IGNORECASE,
    )


_KEY = _key_regex()
_LABEL_WORD = re.compile(r"\b(positive|neutral|negative)\b", re.IGNORECASE)
_TRIM = " \t\r\n\"'`*,{}[]"


def _field_of(match: re.Match[str]) -> str:
    for name in CHAIN_FIELDS:
        if match.group(name) or match.group(f"{name}_s"):
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def _clean(value: str) -> str:
    value = value.strip(_TRIM)
    value = value.replace('\\"', '"').replace("\\n", " ")
    return re.sub(r"\s+", " ", value).strip(_TRIM)


def label_in(text: str, *, last: bool = False) -> Label | None:
    """The first (or last) label word in ``text``, or None."""
    found = _LABEL_WORD.findall(text or "")
    if not found:
        return None
    return Label.parse(found[-1] if last else found[0])


def _from_json(raw: str) -> dict[str, str] | None:
    start, end = raw.find("{"), raw.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(raw[start : end + 1])
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    out: dict[str, str] = {}
    for key, value in obj.items():
        norm = re.sub(r"[\s\-]+", "_", str(key)).strip("_").lower()
        for name in CHAIN_FIELDS:
            if norm == name.lower():
                out[name] = _clean(str(value))
    return out or None


_KEY_NAMES = tuple(name.lower() for name in CHAIN_FIELDS)
_TAIL_LINE = re.compile(r"\n[ \t\"'`*#>\-]*([A-Za-z][A-Za-z _\-]*)[\"'`*]*[ \t]*$")


def _drop_partial_key(value: str) -> str:
    """Output cut off in the middle of the next key (``...\n\n"Image_ana``) leaves the key's
    start on the last line of the last field: drop such a line."""
    m = _TAIL_LINE.search(value)
    if m:
        frag = re.sub(r"[\s\-]+", "_", m.group(1).strip()).lower()
        if frag and any(key.startswith(frag) for key in _KEY_NAMES):
            return value[: m.start()]
    return value


def _from_keys(raw: str) -> dict[str, str]:
    matches = list(_KEY.finditer(raw))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        name = _field_of(m)
        if name in out:  # first occurrence wins (models sometimes repeat the format line)
            continue
        last = i + 1 == len(matches)
        value = raw[m.end() : matches[i + 1].start() if not last else len(raw)]
        out[name] = _clean(_drop_partial_key(value) if last else value)
    return out


def parse_chain(raw: str) -> ReasoningChain:
    """Parse model output into a :class:`ReasoningChain`; never raises.

    ``prediction`` is normalised to a label word when one can be found in the Prediction
    field; when the field is missing it stays empty (see :func:`chain_label`).
    """
    raw = raw if isinstance(raw, str) else str(raw)
    fields = _from_json(raw) or {}
    if len(fields) < len(CHAIN_FIELDS):
        for name, value in _from_keys(raw).items():
            fields.setdefault(name, value)
    pred = fields.get("Prediction", "")
    if pred:
        label = label_in(pred)
        fields["Prediction"] = label.value if label else ""
    missing = tuple(name for name in CHAIN_FIELDS if not fields.get(name))
    return ReasoningChain(
        **{_ATTR[name]: fields.get(name, "") for name in CHAIN_FIELDS},
        raw=raw,
        parsed=not missing,
        missing=missing,
    )


def chain_label(chain: ReasoningChain) -> Label | None:
    """The label a chain argues for: its Prediction field, else the last label word of its
    conclusion, else None."""
    if chain.prediction:
        return Label.parse(chain.prediction)
    return label_in(chain.final_conclusion, last=True)




# ------------------------------------------------------------------ chains generated by a student

#: Stop strings of chain generation: decoding stops as soon as the model writes the
#: ``Prediction`` key (the HF student's ``generate``, the engine, the OpenAI student's ``stop``).
STOP_STRINGS = ("Prediction", 'prediction"')

_PRED_KEY = re.compile(r"(?:^|\n)[ \t\"'`*#>\-{,]*prediction[\"'`* \t]*[:=]?", re.IGNORECASE)


def chain_with_label(generated: str, label: Label) -> tuple[ReasoningChain, Label | None]:
    """Cut ``generated`` at its ``Prediction`` key, append ``"Prediction": <label>`` and parse.

    Returns ``(chain, own)``: the parsed chain (Prediction == label) and the label the model's own
    text argued for (its Prediction field if it wrote one, else the last label word of its
    conclusion), or None."""
    text = generated or ""
    m = _PRED_KEY.search(text)
    own = chain_label(parse_chain(text))
    if m:
        text = text[: m.start()]
    else:
        # decoding stopped on the word "Prediction" inside a line: drop that word
        text = re.sub(r"[\"'`*]*prediction[\"'`*]*\s*$", "", text, flags=re.IGNORECASE)
    text = text.rstrip(" \t\r\n,")
    raw = (text + "\n\n" if text else "") + f'"Prediction": {label.value}'
    return parse_chain(raw).with_prediction(label), own


def with_generated_chain(pred: Prediction, generated: str, prompt_tokens: int, generated_tokens: int,
                         chain_ms: float) -> Prediction:
    """``pred`` (from ``classify``) with the chain made of the ``generated`` text
    (:func:`chain_with_label`), its token counts and time, and in ``extra`` the label the model's
    own text argued for (``chain_label``) and whether it agrees with the published label
    (``chain_agrees``). The HF, engine and OpenAI students all build their chained predictions
    here."""
    chain, own = chain_with_label(generated, pred.label)
    extra = {**pred.extra, "chain_label": own.value if own else None,
             "chain_agrees": (own == pred.label) if own else None, "chain_prompt_tokens": int(prompt_tokens)}
    return Prediction(**{**pred.__dict__, "chain": chain, "prompt_tokens": pred.prompt_tokens + int(prompt_tokens),
                         "generated_tokens": int(generated_tokens), "chain_ms": chain_ms, "extra": extra})


__all__ = ["STOP_STRINGS", "chain_label", "chain_with_label", "label_in", "parse_chain", "with_generated_chain"]
