"""The batched engine (model/engine/) against transformers, on the tiny random models (CPU, fp32).

The reference is the HF student's own path: ``label_logits`` for the labels and
``model.generate`` (greedy, the same stop strings) for the chains. The engine must give the
same tokens, token for token, with its slots fewer than the posts (continuous refill),
chains of different lengths (an end-of-turn id that the random model writes at different
points), prompt and key lengths padded to buckets, and the same label probabilities.
"""

from __future__ import annotations

import json

import pytest
import torch

from model.bench import synthetic_posts
from model.engine import Engine, EngineConfig
from model.engine.checks.reference import hf_student, reference_run
from model.engine.checks.shapes import build_shape
from model.types import PostInput


@pytest.fixture(scope="module")
def qwen():
    return build_shape("tiny", image_size=56)


def _config(**kw) -> EngineConfig:
    base = dict(slots=3, max_new_tokens=16, max_len=512, sync_every=3, len_bucket=16, kv_bucket=32, image_size=56,
                admit_min=1)
    base.update(kw)
    return EngineConfig(**base)


def _varied_eos(tokens: list[list[int]]) -> list[int]:
    """Two token ids that end the random model's chains at different points: the ids whose first
    appearance (after the first token) varies most across rows."""
    first: dict[int, list[int]] = {}
    for row in tokens:
        seen = set()
        for i, t in enumerate(row[1:], 1):
            if t not in seen:
                seen.add(t)
                first.setdefault(t, []).append(i)
    ranked = sorted(first, key=lambda t: (-len(set(first[t])), t))
    return ranked[:2]


def test_engine_greedy_tokens_equal_generate_with_refill(qwen):
    model, processor = qwen
    posts = synthetic_posts(8, image_px=112, with_images=0.7)  # text-only posts, aspects, images
    probe = Engine(model, processor, _config())
    eos = _varied_eos([r.tokens for r in probe.run(posts)])
    probe.close()
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        engine = Engine(model, processor, _config())
        got = engine.run(posts)
        student = hf_student(model, processor, image_size=56, max_new_tokens=16)
        ref = reference_run(student, posts, batch_size=len(posts), max_new_tokens=16)
    finally:
        model.generation_config.eos_token_id = saved
    lengths = [len(t) for t in ref["tokens"]]
    assert len(set(lengths)) >= 3, lengths  # chains of different lengths ...
    assert engine.stats["refills"] >= 3 and engine.stats["admissions"] >= 3  # ... refilling freed slots
    assert [r.tokens for r in got] == ref["tokens"]
    mine = torch.tensor([r.label_scores for r in got])
    theirs = torch.tensor(ref["scores"])
    assert torch.allclose(mine.softmax(-1), theirs.softmax(-1), atol=1e-5)
    assert [r.text for r in got] == processor.tokenizer.batch_decode(ref["tokens"], skip_special_tokens=True)
    # two callers at once (a worker with two batches in flight): their posts share the slots
    # (the engine read the end-of-turn ids when it was made)
    first, second = engine.submit(posts[:5]), engine.submit(posts[5:])
    both = first.result(timeout=120) + second.result(timeout=120)
    assert [r.tokens for r in both] == ref["tokens"]
    engine.close()


def test_engine_labels_only_equal_hf_student(qwen):
    model, processor = qwen
    posts = synthetic_posts(5, image_px=112, seed=3)
    engine = Engine(model, processor, _config(slots=2))
    student = hf_student(model, processor, image_size=56, max_new_tokens=8, chain=False)
    mine = [r.label_scores for r in engine.classify(posts)]
    preds = student.classify(posts)
    for scores, pred in zip(mine, preds):
        probs = torch.tensor(scores).softmax(-1).tolist()
        assert probs == pytest.approx(list(pred.probabilities.values()), abs=1e-5)
    engine.close()


def test_engine_smolvlm_family():
    model, processor = build_shape("tiny-smolvlm", image_size=56)
    posts = synthetic_posts(4, image_px=112, seed=5)
    engine = Engine(model, processor, _config(slots=2, max_new_tokens=10))
    got = engine.run(posts)
    student = hf_student(model, processor, image_size=56, max_new_tokens=10)
    ref = reference_run(student, posts, batch_size=4, max_new_tokens=10)
    assert [r.tokens for r in got] == ref["tokens"]
    engine.close()


def test_checks_at_tiny_shape():
    """The GPU checks' code (fp32 greedy, teacher-forced logits) runs and agrees on CPU."""
    from model.engine.checks.bench import run_engine_checks

    out = run_engine_checks("tiny", n_posts=2, new_tokens=5)
    assert out["fp32_greedy"]["token_agreement"] == 1.0
    assert out["fp32_greedy"]["label_agreement"] == 1.0
    tf = out["teacher_forced"]
    assert tf["positions"] == 2 * 5
    assert tf["top1_agreement"] == 1.0 and tf["max_logit_diff"] < 1e-3 and tf["label_agreement"] == 1.0


def test_bench_engine_cli_tiny():
    """`mulcot bench engine --shape tiny --json` through the CLI's entry point group."""
    from click.testing import CliRunner

    from stream.cli import main

    res = CliRunner().invoke(main, ["bench", "engine", "--shape", "tiny", "--batch", "4", "--posts", "4",
                                    "--new-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    for side in ("engine", "reference"):
        for key in ("posts_per_s", "labels_posts_per_s", "tokens_per_s", "p50_batch_ms", "peak_gb"):
            assert out[side][key] is not None and out[side][key] > 0, (side, key)
    assert out["token_agreement"] == 1.0 and out["label_agreement"] == 1.0
    assert out["device"].startswith("CPU")
    assert out["engine"]["generated_tokens"] == out["reference"]["generated_tokens"]


@pytest.mark.slow
def test_train_check_tiny():
    """deploy/gpu/train_check.py (the 3B training step's GPU check) runs at the tiny shape: LoRA
    on both towers, gradient checkpointing, the student stage's KD loss, finite losses."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "gpu" / "train_check.py"
    spec = importlib.util.spec_from_file_location("train_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--tiny", "--micro-batches", "1", "--steps", "1"])
    assert out["lora"]["text_tensors"] > 0 and out["lora"]["vision_tensors"] > 0
    run = out["runs"][0]
    assert run["micro_batch"] == 1 and run["samples_per_s"] > 0
    assert all(x == x and x > 0 for x in run["losses"])  # finite, positive


def test_engine_behind_hf_student_gives_hf_predictions(qwen):
    """The HF student's engine path (model.engine.path.EnginePath, what HFStudent calls with
    engine=on) returns the predictions the HF path returns: labels, probabilities, chains, token
    counts."""
    model, processor = qwen
    posts = synthetic_posts(4, image_px=112, seed=7)
    st = hf_student(model, processor, image_size=56, max_new_tokens=10)
    assert st.attach_engine("auto") is None  # CPU: auto leaves it off
    assert st.engine is None and not st.thread_safe
    ref = st.predict(posts)  # HFStudent's own path
    path = st.attach_engine(True, slots=2, max_len=512)
    assert st.engine is path and st.thread_safe
    try:
        mine = path.predict(posts)
        labels_only = path.classify(posts)
    finally:
        path.close()
    for a, b, c in zip(mine, ref, labels_only):
        assert a.label == b.label == c.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert a.chain == b.chain and a.generated_tokens == b.generated_tokens
        assert a.prompt_tokens == b.prompt_tokens
        assert a.extra["chain_label"] == b.extra["chain_label"]


def test_qwen_positions_equal_get_rope_index(qwen):
    """The engine's 3-D rotary positions equal transformers' get_rope_index for posts with
    images of several aspect ratios (and plain counting without an image)."""
    from PIL import Image

    from model.engine.inputs import Planner

    model, processor = qwen
    planner = Planner(model, processor, image_size=112)
    for size in [(112, 112), (300, 80), (60, 200), (33, 33)]:
        plan = planner.plan(0, PostInput("a post", image=Image.new("RGB", size, (9, 99, 199)), aspect="post"))
        for ids in (plan.label_ids, plan.reason_ids):
            assert torch.equal(planner.positions(ids, plan.grid_thw), planner.rope_index(ids, plan.grid_thw))
    plan = planner.plan(0, PostInput("no image"))
    assert torch.equal(plan.reason_pos, torch.arange(len(plan.reason_ids))[None].expand(3, -1))


def test_engine_fails_one_job_and_keeps_serving(qwen):
    """A post too long for a slot fails its own job (DoesNotFit: the HF student then takes its
    own path); the engine serves the next job."""
    from model.engine import DoesNotFit

    model, processor = qwen
    engine = Engine(model, processor, _config(slots=2, max_len=256))
    too_long = PostInput("word " * 400)
    with pytest.raises(DoesNotFit):
        engine.run([too_long])
    got = engine.run(synthetic_posts(2, image_px=112, seed=9))
    assert all(len(r.tokens) > 0 for r in got)
    engine.close()


@pytest.mark.slow
def test_engine_check_script_tiny(tmp_path):
    """deploy/gpu/engine_check.py (what deploy/gpu/engine.sh runs on the GPU) at the tiny shape:
    every stage writes its JSON."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "gpu" / "engine_check.py"
    spec = importlib.util.spec_from_file_location("engine_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = mod.main(["--shape", "tiny", "--batches", "3", "2", "--new-tokens", "6", "--check-posts", "2",
                        "--check-tokens", "4", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == {"engine_b3.json", "engine_b2.json", "engine_checks.json",
                                                    "engine_summary.json"}
    assert summary["checks"]["fp32_greedy"]["token_agreement"] == 1.0
    assert all("error" not in summary[k] for k in ("b3", "b2"))


def test_labels_only_posts_do_not_wait_for_chains(qwen):
    """With every slot holding a chain, a labels-only caller (the worker's label-first path) is
    served from the label rows at the next engine iteration, not after the chains."""
    model, processor = qwen
    engine = Engine(model, processor, _config(slots=2, label_rows=1))
    posts = synthetic_posts(6, image_px=112, seed=11)
    alone = [r.label_scores for r in engine.classify(posts[4:])]
    chains = engine.submit(posts[:4])
    labels = engine.submit(posts[4:], chain=False).result(timeout=120)
    assert not chains.done()  # 4 chains on 2 slots: two rounds of 16 tokens still to go
    assert torch.allclose(torch.tensor([r.label_scores for r in labels]), torch.tensor(alone), atol=1e-5)
    assert len(chains.result(timeout=120)) == 4
    engine.close()


def test_hf_student_engine_option(tiny_qwen_dir):
    """load_student("hf:...", engine="on") serves predict/classify through the engine with the
    HF path's predictions (engine="off"); "auto" stays off on CPU."""
    from model import load_student

    posts = synthetic_posts(3, image_px=112, seed=13)
    off = load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=8, image_size=56, engine="off")
    on = load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=8, image_size=56, engine="on", engine_slots=2,
                      engine_max_len=512)
    auto = load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=8, image_size=56)
    assert off.engine is None and auto.engine is None and on.engine is not None
    try:
        got, ref = on.predict(posts), off.predict(posts)
        labels = on.classify(posts)
    finally:
        on.engine.close()
    assert all(p.extra.get("engine") for p in got + labels)
    for a, b in zip(got, ref):
        assert a.label == b.label and a.chain == b.chain and a.generated_tokens == b.generated_tokens
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
