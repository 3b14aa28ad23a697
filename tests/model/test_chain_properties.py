"""Property tests for ``model.chain.parse_chain`` on mangled chains, plus the real teacher chains."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import CHAIN_FIELDS, Label, ReasoningChain, parse_chain

_ATTR = {
    "Text_analysis": "text_analysis",
    "Image_analysis": "image_analysis",
    "Conflict_resolution": "conflict_resolution",
    "Final_conclusion": "final_conclusion",
    "Prediction": "prediction",
}
_TRIM = " \t\r\n\"'`*,{}[]"
# words that would legitimately be read as a key if a model wrote them in a field's text
_KEYWORDS = re.compile(
    r"analysis|resolution|conclusion|prediction|text|image|conflict|sentiment|label|final", re.IGNORECASE
)

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

value_text = (
    st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'()-"),
            min_size=1, max_size=60)
    .map(lambda s: re.sub(r"\s+", " ", s))
    # a field is prose: at least one letter or digit (a lone "-" reads as a bullet/placeholder)
    .filter(lambda s: re.search(r"[A-Za-z0-9]", s) and not _KEYWORDS.search(s))
)
labels = st.sampled_from([l.value for l in Label])


def _norm(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip(_TRIM)).strip(_TRIM)


@st.composite
def chains(draw) -> ReasoningChain:
    return ReasoningChain(
        text_analysis=_norm(draw(value_text)),
        image_analysis=_norm(draw(value_text)),
        conflict_resolution=_norm(draw(value_text)),
        final_conclusion=_norm(draw(value_text)),
        prediction=draw(labels),
    )


def _key_variant(draw, name: str) -> str:
    sep = draw(st.sampled_from(["_", " ", "-"]))
    key = name.replace("_", sep)
    case = draw(st.sampled_from(["same", "lower", "upper", "title"]))
    return {"same": key, "lower": key.lower(), "upper": key.upper(), "title": key.title()}[case]


@st.composite
def mangled(draw) -> tuple[str, ReasoningChain]:
    """A chain written in one of the formats models really produce."""
    chain = draw(chains())
    fields = chain.fields()
    style = draw(st.sampled_from(["teacher", "unquoted", "bold_inside", "bold_outside", "heading", "json",
                                  "single_quotes", "dash"]))
    joiner = draw(st.sampled_from(["\n", "\n\n", "\n \n"]))
    parts = []
    for name, value in fields.items():
        key = _key_variant(draw, name)
        if style == "teacher":
            parts.append(f'"{key}": "{value}"' if name != "Prediction" else f'"{key}": {value}')
        elif style == "unquoted":
            parts.append(f"{key}: {value}")
        elif style == "bold_inside":
            parts.append(f"**{key}:** {value}")
        elif style == "bold_outside":
            parts.append(f"**{key}**: {value}")
        elif style == "heading":
            level = draw(st.integers(1, 4))
            parts.append(f"{'#' * level} {key}\n{value}")
        elif style == "single_quotes":
            parts.append(f"'{key}': '{value}'")
        elif style == "dash":
            parts.append(f"- {key}: {value}")
        else:
            parts = None
            break
    if style == "json":
        obj = {_key_variant(draw, k): v for k, v in fields.items()}
        body = json.dumps(obj, indent=draw(st.sampled_from([None, 2])))
    else:
        body = joiner.join(parts)
    pre = draw(st.one_of(st.just(""), value_text.map(lambda s: s + "\n\n")))
    post = draw(st.one_of(st.just(""), value_text.map(lambda s: "\n\n" + s)))
    if style != "json" and post:
        # text after the Prediction value stays in that field; the label word comes first
        pass
    return pre + body + post, chain


@PROFILE
@given(chains())
def test_render_round_trips(chain):
    parsed = parse_chain(chain.render())
    assert parsed.parsed and parsed.missing == ()
    assert parsed.fields() == chain.fields()
    assert parse_chain(parsed.render()).fields() == chain.fields()


@PROFILE
@given(mangled())
def test_mangled_formats_are_read(case):
    raw, chain = case
    parsed = parse_chain(raw)
    assert parsed.raw == raw
    assert parsed.parsed, (raw, parsed)
    assert parsed.fields() == chain.fields(), raw


@PROFILE
@given(chains(), st.sets(st.sampled_from(CHAIN_FIELDS), min_size=1, max_size=5))
def test_missing_fields_are_flagged(chain, dropped):
    fields = {k: v for k, v in chain.fields().items() if k not in dropped}
    raw = "\n\n".join(f'"{k}": "{v}"' if k != "Prediction" else f'"{k}": {v}' for k, v in fields.items())
    parsed = parse_chain(raw)
    assert not parsed.parsed
    assert parsed.missing == tuple(k for k in CHAIN_FIELDS if k in dropped)
    for k, v in fields.items():
        assert parsed.fields()[k] == v
    for k in dropped:
        assert parsed.fields()[k] == ""


@PROFILE
@given(chains(), st.data())
def test_truncated_chains_keep_complete_fields(chain, data):
    raw = chain.render()
    cut = data.draw(st.integers(0, len(raw)))
    parsed = parse_chain(raw[:cut])
    assert parsed.parsed == (parsed.missing == ())
    assert set(parsed.missing) == {k for k, v in parsed.fields().items() if not v}
    # every field whose text was kept whole is read exactly, also when the output stops in the
    # middle of the next key ('..."\n\n"Image_ana')
    keys = [raw.index(f'"{k}":') for k in CHAIN_FIELDS]
    for i, name in enumerate(CHAIN_FIELDS[:-1]):
        if cut >= keys[i + 1]:
            assert parsed.fields()[name] == chain.fields()[name], (raw[:cut], name)
    if cut == len(raw):
        assert parsed.parsed


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_random_junk_never_raises(junk):
    parsed = parse_chain(junk)
    assert isinstance(parsed, ReasoningChain)
    assert parsed.prediction in ("", "positive", "neutral", "negative")
    assert parsed.parsed == (parsed.missing == ())
    assert all(isinstance(v, str) for v in parsed.fields().values())


@settings(max_examples=150, deadline=None)
@given(mangled(), st.text(max_size=40), st.integers(0, 10_000))
def test_junk_inserted_into_chains_never_raises(case, junk, pos):
    raw, _ = case
    pos = pos % (len(raw) + 1)
    parsed = parse_chain(raw[:pos] + junk + raw[pos:])
    assert parsed.prediction in ("", "positive", "neutral", "negative")


def test_non_string_input_does_not_raise():
    assert not parse_chain(None).parsed  # type: ignore[arg-type]
    assert not parse_chain(12345).parsed  # type: ignore[arg-type]


def test_prediction_normalised_and_wrong_case_keys():
    raw = "TEXT ANALYSIS: happy\nimage-analysis: sunny\nConflict Resolution: none\n" \
          "final_conclusion: good\nPREDICTION: **Positive**."
    parsed = parse_chain(raw)
    assert parsed.parsed and parsed.prediction == "positive"


@pytest.mark.data
def test_teacher_chains_parse(data_dir):
    """At least 99% of the Twitter-2015 dev/test teacher chains parse into all five fields,
    with a label word in Prediction."""
    total = ok = 0
    for split in ("dev", "test"):
        with open(data_dir / "t15" / f"{split}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if not row.get("teacher_cot"):
                    continue
                total += 1
                chain = parse_chain(row["teacher_cot"])
                ok += chain.parsed and chain.prediction in ("positive", "neutral", "negative")
    assert total > 2000
    assert ok / total >= 0.99, f"{ok}/{total} parsed"
