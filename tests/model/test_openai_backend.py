"""The ``openai:`` student against a local HTTP server that speaks the OpenAI chat-completions
wire format as vLLM/SGLang do, logprobs included (``tests.support.openai_wire_server.WireServer``).

No model server can run on this machine (no GPU, no hub): the server's "model" is a keyword
rule, so what is checked is the client side: label probabilities read from the answer position's
top logprobs and renormalised over the three labels, the constrained-choice fallback, chains cut
at the Prediction key that agree with the label, token counts, the API key, the concurrency
limit and retries on 429/503.
"""

from __future__ import annotations

import pytest
from PIL import Image

from model import load_student
from model.backends.openai.student import label_of_token, label_probabilities, parse_target
from model.http import EndpointError
from model.loading import SpecError, parse_spec
from model.types import Label, PostInput
from tests.support.openai_wire_server import WireServer


@pytest.fixture
def server():
    s = WireServer(api_key="sk-test").start()
    yield s
    s.stop()


@pytest.fixture
def student(server):
    st = load_student(f"openai:{server.base_url}#{server.model}", api_key="sk-test", backoff_s=0.01,
                      max_concurrency=4)
    yield st
    st.close()


POSTS = [
    PostInput(text="I love this sunny day", id="a"),
    PostInput(text="my phone is broken again", image=Image.new("RGB", (64, 48), "grey"), id="b"),
    PostInput(text="the meeting is at noon", aspect="meeting", id="c"),
]


def test_spec_parsing() -> None:
    assert parse_spec("openai:http://vllm:8000/v1#sghn/MulCoT-RD-3B") == (
        "openai", "http://vllm:8000/v1#sghn/MulCoT-RD-3B", None)
    assert parse_target("http://vllm:8000/v1/#sghn/MulCoT-RD-3B") == ("http://vllm:8000/v1", "sghn/MulCoT-RD-3B", {})
    assert parse_target("https://h/v1") == ("https://h/v1", None, {})
    assert parse_target("http://h/v1#m?constraint=regex&top_logprobs=10&chain=false") == (
        "http://h/v1", "m", {"constraint": "regex", "top_logprobs": 10, "chain": False})
    with pytest.raises(ValueError):
        parse_target("vllm:8000/v1#m")
    with pytest.raises(SpecError, match="http"):  # checked when the spec is parsed, before any request
        parse_spec("openai:vllm:8000/v1#m")


def test_label_token_matching() -> None:
    assert label_of_token(" Positive") is Label.POSITIVE and label_of_token("neg") is Label.NEGATIVE
    assert label_of_token("**neutral**") is Label.NEUTRAL and label_of_token("ne") is None  # ambiguous
    assert label_of_token("The") is None and label_of_token("") is None
    # 0.55 + 0.15 positive, 0.12 neutral, 0.08 negative; non-label tokens ignored, renormalised
    probs, missing = label_probabilities([
        {"token": "positive", "logprob": -0.5978}, {"token": " Positive", "logprob": -1.8971},
        {"token": "neutral", "logprob": -2.1203}, {"token": "neg", "logprob": -2.5257},
        {"token": "The", "logprob": -2.9957}])
    assert missing == [] and sum(probs) == pytest.approx(1.0)
    assert probs == pytest.approx([0.70 / 0.90, 0.12 / 0.90, 0.08 / 0.90], abs=1e-4)
    assert label_probabilities([{"token": "The", "logprob": -0.1}]) == (None, [])
    assert label_probabilities([{"token": "positive", "logprob": -9999.0}, {"token": "The", "logprob": -0.01}]) == (None, [])


def test_labels_probabilities_chains_and_tokens(server, student) -> None:
    preds = student.predict(POSTS)
    assert [p.label for p in preds] == [Label.POSITIVE, Label.NEGATIVE, Label.NEUTRAL]
    for p in preds:
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
        # the fake's answer position: label 0.55 + 0.15, the next 0.12, the last 0.08 (as "neu"/"neg")
        assert p.confidence == pytest.approx(0.70 / 0.90)
        assert p.extra["label_source"] == "logprobs" and p.extra["labels_not_in_top"] == []
        assert p.chain is not None and p.chain.parsed and p.chain.prediction == p.label.value
        assert p.extra["chain_agrees"] is True
        assert p.model_name == f"openai:{server.model}" and p.prompt_version
        assert p.generated_tokens > 0 and p.prompt_tokens > p.extra["label_prompt_tokens"] > 0
    assert preds[1].probabilities == pytest.approx({"negative": 0.70 / 0.90, "positive": 0.12 / 0.90,
                                                    "neutral": 0.08 / 0.90})
    # the image travelled (decoded by the server) and the chain says what the model saw
    assert (64, 48) in server.images_seen
    assert "64x48" in preds[1].chain.image_analysis and "no image" in preds[0].chain.image_analysis
    # requests: 3 label requests (max_tokens 1, top_logprobs) + 3 chain requests stopping at Prediction
    label_reqs = [r for r in server.requests if r.get("max_tokens") == 1]
    chain_reqs = [r for r in server.requests if r.get("stop")]
    assert len(label_reqs) == 3 and len(chain_reqs) == 3 and len(server.requests) == 6
    assert all(r["logprobs"] is True and r["top_logprobs"] == 20 and r["temperature"] == 0 for r in label_reqs)
    assert all("Prediction" in r["stop"] for r in chain_reqs)
    # token counts match the server's usage
    assert student.http.usage.requests == 6 and student.http.usage.retries == 0
    assert student.http.usage.prompt_tokens == sum(p.prompt_tokens for p in preds)


def test_chain_that_argues_otherwise_still_agrees_with_label(server, student) -> None:
    server.contrary.add(POSTS[0].text)
    (p,) = student.predict(POSTS[:1])
    assert p.label is Label.POSITIVE and p.chain.prediction == "positive"
    assert p.extra["chain_label"] == "negative" and p.extra["chain_agrees"] is False


def test_labels_only_and_label_first(server, student) -> None:
    preds = student.predict(POSTS, chain=False)
    assert all(p.chain is None for p in preds) and len(server.requests) == 3
    early = student.classify(POSTS[:2])
    full = student.explain(POSTS[:2], early)
    assert [p.label for p in early] == [p.label for p in full] and all(p.chain for p in full)


def test_label_missing_from_top_logprobs(server, student) -> None:
    server.partial.add(POSTS[0].text)  # "neg" not listed: bounded by the mass left (0.08) and the min (0.02)
    (p,) = student.classify(POSTS[:1])
    assert p.extra["labels_not_in_top"] == ["negative"]
    assert p.probabilities == pytest.approx({"positive": 0.70 / 0.84, "neutral": 0.12 / 0.84, "negative": 0.02 / 0.84})


def test_constrained_choice_fallback(server, student) -> None:
    server.hide_labels.add(POSTS[1].text)
    p = student.classify(POSTS)[1]
    assert p.label is Label.NEGATIVE and sum(p.probabilities.values()) == pytest.approx(1.0)
    assert p.extra["label_source"] in ("choice_logprobs", "choice")
    constrained = [r for r in server.requests if "structured_outputs" in r]
    assert len(constrained) == 1 and constrained[0]["structured_outputs"]["choice"] == ["positive", "neutral", "negative"]
    # a server that ignores the constraint and answers in a sentence: its first label word counts
    server.hide_labels.add(POSTS[0].text)
    server.ignore_constraint.add(POSTS[0].text)
    (p,) = student.classify(POSTS[:1])
    assert p.label is Label.POSITIVE and p.extra["label_source"] == "choice"
    assert p.probabilities == {"positive": 1.0, "neutral": 0.0, "negative": 0.0}


def test_retries_on_429_and_503(server, student) -> None:
    server.fail = [429, 503, 503]
    preds = student.predict(POSTS[:2])
    assert [p.label for p in preds] == [Label.POSITIVE, Label.NEGATIVE]
    assert server.errors_sent == 3 and student.http.usage.retries == 3
    assert len(server.requests) == 4 + 3


def test_gives_up_and_fails_fast_on_client_errors(server) -> None:
    st = load_student(f"openai:{server.base_url}#{server.model}", api_key="sk-test", backoff_s=0.01, max_retries=1)
    try:
        server.fail = [503, 503]
        with pytest.raises(EndpointError, match="gave up after 2 tries") as gave_up:
            st.classify(POSTS[:1])
        assert gave_up.value.transient and gave_up.value.status == 503  # the server's fault: retry later
        server.fail = [400]
        with pytest.raises(EndpointError, match="HTTP 400") as bad:
            st.classify(POSTS[:1])
        assert not bad.value.transient  # the request's fault: the post becomes a dead letter
        server.fail = [401]
        with pytest.raises(EndpointError, match="HTTP 401") as key:
            st.classify(POSTS[:1])
        assert key.value.transient  # a wrong key is no reason to give the post up
        assert st.http.usage.failures == 3
    finally:
        st.close()


def test_api_key_model_discovery_and_concurrency(server, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MULCOT_OPENAI_API_KEY", "wrong")
    bad = load_student(f"openai:{server.base_url}", max_retries=0)  # model read from /v1/models
    try:
        assert bad.model == server.model
        with pytest.raises(EndpointError, match="401"):
            bad.classify(POSTS[:1])
    finally:
        bad.close()
    monkeypatch.setenv("MULCOT_OPENAI_API_KEY", "sk-test")
    server.delay_s = 0.05
    st = load_student(f"openai:{server.base_url}#{server.model}?max_concurrency=2&top_logprobs=5")  # spec options
    try:
        preds = st.classify([PostInput(text=f"happy post {i}") for i in range(8)])
        assert len(preds) == 8 and server.max_in_flight == 2
        assert server.requests[-1]["top_logprobs"] == 5
        assert "mm_processor_kwargs" not in server.requests[-1]
    finally:
        st.close()
    st = load_student(f"openai:{server.base_url}#{server.model}?image_size=280")
    try:
        st.classify(POSTS[1:2])
        assert server.requests[-1]["mm_processor_kwargs"] == {"min_pixels": 78400, "max_pixels": 78400}
    finally:
        st.close()


def test_prompt_logprobs_scoring_scores_every_word_exactly(server) -> None:
    """vLLM's prompt_logprobs: each label word continued as the answer, its tokens' logprobs summed."""
    st = load_student(f"openai:{server.base_url}#{server.model}?label_scoring=prompt_logprobs", api_key="sk-test")
    try:
        preds = st.classify(POSTS)
        assert [p.label for p in preds] == [Label.POSITIVE, Label.NEGATIVE, Label.NEUTRAL]
        assert preds[0].probabilities == pytest.approx({"positive": 0.7, "neutral": 0.2, "negative": 0.1})
        assert preds[1].probabilities == pytest.approx({"negative": 0.7, "positive": 0.2, "neutral": 0.1})
        assert all(p.extra["label_source"] == "prompt_logprobs" for p in preds)
        words = [r for r in server.requests if r.get("continue_final_message")]
        assert len(words) == 9 and {r["messages"][1]["content"] for r in words} == {"positive", "neutral", "negative"}
        assert all(r["prompt_logprobs"] == 0 and r["add_generation_prompt"] is False for r in words)
        # a server without prompt_logprobs: a clear error, not a guess
        with pytest.raises(EndpointError, match="label_scoring=top_logprobs"):
            import asyncio
            asyncio.run_coroutine_threadsafe(st._label_words(POSTS[0], "x", 10**6), st.loop.loop).result(10)
    finally:
        st.close()
