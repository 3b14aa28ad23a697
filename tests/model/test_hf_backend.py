"""The Hugging Face student on tiny random Qwen2.5-VL and Idefics3 (SmolVLM) models."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from model import LABELS, Label, PostInput, load_student, parse_spec
from model.backends.hf.inputs import encode_batch, prepare_image, render_prompt
from model.backends.hf.processor import save_processor
from model.backends.hf.student import HFStudent
from model.backends.tiny.build import load_tiny
from model.chain import chain_with_label
from model.prompts import label_prompt, reasoning_prompt


def _img(mode: str, size: tuple[int, int], color=128) -> Image.Image:
    if mode == "P":
        return Image.new("RGB", size, (200, 30, 30)).convert("P")
    if mode == "1":
        return Image.new("1", size, 1)
    if mode == "RGBA":
        return Image.new("RGBA", size, (10, 200, 10, 100))
    return Image.new(mode, size, color)


def _posts() -> list[PostInput]:
    return [
        PostInput("Best day ever at the beach!", image=_img("RGB", (120, 80))),
        PostInput("The train was late again.", aspect="train"),
        PostInput("A much longer post about the council meeting on Tuesday and the budget it will discuss "
                  "at great length with everyone", image=_img("L", (64, 64))),
        PostInput("ok", image=_img("RGBA", (1, 1))),
        PostInput("short"),
    ]


def _check(preds, n, *, chain: bool):
    assert len(preds) == n
    for p in preds:
        assert set(p.probabilities) == {l.value for l in LABELS}
        assert math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-5)
        assert all(0.0 < v < 1.0 for v in p.probabilities.values())
        assert p.label.value == max(p.probabilities, key=p.probabilities.get)
        assert p.prompt_tokens > 0 and p.label_ms > 0
        if chain:
            assert p.chain is not None and p.chain.prediction == p.label.value
            assert p.generated_tokens > 0 and p.chain_ms > 0
            assert p.chain.raw.rstrip().endswith(f'"Prediction": {p.label.value}')
        else:
            assert p.chain is None and p.generated_tokens == 0


def test_batch_shapes_and_agreement(tiny_student):
    from model import Student

    assert isinstance(tiny_student, Student) and isinstance(tiny_student, HFStudent)
    posts = _posts()
    preds = tiny_student.predict(posts)
    _check(preds, len(posts), chain=True)
    assert tiny_student.predict([]) == []


def test_left_padding_does_not_change_scores(tiny_student):
    """A post scores the same alone and in a batch with longer posts (left padding + masks)."""
    posts = _posts()
    batched = tiny_student.classify(posts)
    for i in (0, 1, 4):
        alone = tiny_student.classify([posts[i]])[0]
        for k in alone.probabilities:
            assert alone.probabilities[k] == pytest.approx(batched[i].probabilities[k], abs=1e-4)


def test_padding_is_left_and_image_tokens_only_for_image_posts(tiny_student):
    posts = _posts()
    proc = tiny_student.processor
    enc = encode_batch(proc, posts, [label_prompt(p) for p in posts], family=tiny_student.family, image_size=56)
    mask = enc["attention_mask"]
    assert mask.shape == enc["input_ids"].shape and mask.shape[0] == len(posts)
    assert bool((mask[:, -1] == 1).all()), "every row must end with a real token (left padding)"
    shortest = int(mask.sum(-1).argmin())
    assert mask[shortest, 0] == 0
    image_id = tiny_student.model.config.image_token_id
    n_image_tokens = (enc["input_ids"] == image_id).sum(-1).tolist()
    for post, n in zip(posts, n_image_tokens):
        assert (n > 0) == (post.image is not None)


@pytest.mark.parametrize(
    "image",
    [
        _img("RGBA", (50, 40)),
        _img("L", (33, 77)),
        _img("P", (90, 45)),
        _img("1", (40, 40)),
        _img("RGB", (1, 1)),
        _img("RGB", (3000, 20)),
        _img("RGB", (20, 3000)),
        _img("CMYK", (64, 48)),
    ],
    ids=["RGBA", "L", "P", "1bit", "1x1", "3000x20", "20x3000", "CMYK"],
)
def test_odd_images(tiny_qwen_student, image):
    prepared = prepare_image(image)
    assert prepared.mode == "RGB" and min(prepared.size) >= 28
    assert max(prepared.size) / min(prepared.size) <= 50
    preds = tiny_qwen_student.predict([PostInput("look at this", image=image), PostInput("no image here")])
    _check(preds, 2, chain=True)


def test_odd_images_smolvlm(tiny_smolvlm_dir):
    student = load_student(f"hf:{tiny_smolvlm_dir}", max_new_tokens=4)
    images = [_img("RGBA", (50, 40)), _img("P", (90, 45)), _img("RGB", (1, 1)), _img("RGB", (3000, 20))]
    preds = student.predict([PostInput("pic", image=im) for im in images] + [PostInput("text only")])
    _check(preds, 5, chain=True)


def test_image_resolution_is_configurable(tiny_qwen_dir):
    post = PostInput("pic", image=_img("RGB", (112, 112)))
    small = load_student(f"hf:{tiny_qwen_dir}", image_size=56, chain=False).classify([post])[0]
    large = load_student(f"hf:{tiny_qwen_dir}", image_size=112, chain=False).classify([post])[0]
    # 56x56 -> 4 patches of 28 -> 4 image tokens; 112x112 -> 16 image tokens
    assert large.prompt_tokens - small.prompt_tokens == 12


def test_aspect_and_text_only_prompts(tiny_student):
    post = PostInput("The phone is fine but the battery dies fast", aspect="battery")
    text = render_prompt(tiny_student.processor, post, reasoning_prompt(post))
    assert "Target: battery" in text and "toward the target 'battery'" in text
    assert "No image is attached." in text
    plain = PostInput("The phone is fine but the battery dies fast")
    assert "Target:" not in render_prompt(tiny_student.processor, plain, label_prompt(plain))
    preds = tiny_student.predict([post, plain])
    _check(preds, 2, chain=True)
    assert preds[0].prompt_tokens != preds[1].prompt_tokens


def test_labels_only_and_classify_then_explain(tiny_qwen_dir):
    fast = load_student(f"hf:{tiny_qwen_dir}", chain=False, image_size=56)
    posts = _posts()[:3]
    _check(fast.predict(posts), 3, chain=False)
    full = load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=8, image_size=56)
    _check(full.predict(posts, chain=False), 3, chain=False)
    labels = full.classify(posts)
    with_chains = full.explain(posts, labels)
    _check(with_chains, 3, chain=True)
    assert [p.label for p in labels] == [p.label for p in with_chains]


def test_greedy_is_deterministic_and_sampling_is_seeded(tiny_qwen_dir):
    posts = _posts()
    a = load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=16, image_size=56)
    r1, r2 = a.predict(posts), a.predict(posts)
    assert [p.chain.raw for p in r1] == [p.chain.raw for p in r2]
    assert [p.probabilities for p in r1] == [p.probabilities for p in r2]
    s = load_student(f"hf:{tiny_qwen_dir}", max_new_tokens=16, image_size=56, do_sample=True, seed=7,
                     temperature=1.0)
    assert [p.chain.raw for p in s.predict(posts)] == [p.chain.raw for p in s.predict(posts)]


def test_save_and_reload(tiny_qwen_dir, tmp_path):
    model, processor = load_tiny(tiny_qwen_dir)
    model.save_pretrained(tmp_path, safe_serialization=True)
    save_processor(processor, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    posts = _posts()
    a = load_student(f"hf:{tiny_qwen_dir}", chain=False, image_size=56).predict(posts)
    b = load_student(f"hf:{tmp_path}", chain=False, image_size=56).predict(posts)
    for x, y in zip(a, b):
        assert x.label == y.label
        for k in x.probabilities:
            assert x.probabilities[k] == pytest.approx(y.probabilities[k], abs=1e-6)


def test_lora_adapter_load_and_merge(tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, processor = load_tiny(tiny_dir)
    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                     init_lora_weights=False)  # random A and B: the adapter really changes outputs
    peft_model = get_peft_model(model, cfg)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_model.safetensors").exists()

    posts = _posts()[:3]
    base = load_student(f"hf:{tiny_dir}", chain=False, image_size=56)
    spec = f"hf:{tiny_dir}+{adapter_dir}"
    assert parse_spec(spec) == ("hf", str(tiny_dir), str(adapter_dir))
    merged = load_student(spec, chain=False, image_size=56)
    assert merged.info["adapter"] == str(adapter_dir)
    assert not isinstance(merged.model, PeftModel), "adapter must be merged for inference"

    # reference: the unmerged PEFT model's label logits
    ref_model, _ = load_tiny(tiny_dir)
    ref = PeftModel.from_pretrained(ref_model, str(adapter_dir)).eval()
    unmerged = HFStudent(ref, processor, family=base.family, image_size=56, chain=False)
    got = merged.label_logits(posts)[0]
    want = unmerged.label_logits(posts)[0]
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, base.label_logits(posts)[0], atol=1e-3)

    # an adapter directory alone names its base model (adapter_config.json)
    alone = load_student(f"hf:{adapter_dir}", chain=False, image_size=56)
    assert torch.allclose(alone.label_logits(posts)[0], want, atol=1e-4)


def test_chain_with_label_agreement():
    gen = '"Text_analysis": "sad"\n\n"Image_analysis": "grey"\n\n"Conflict_resolution": "none"\n\n' \
          '"Final_conclusion": "negative overall"\n\n"Prediction": negative'
    chain, own = chain_with_label(gen, Label.POSITIVE)
    assert chain.parsed and chain.prediction == "positive" and own is Label.NEGATIVE
    chain, own = chain_with_label(gen.split('"Prediction"')[0] + '"Prediction', Label.NEUTRAL)
    assert chain.parsed and chain.prediction == "neutral" and own is Label.NEGATIVE  # from the conclusion
    stopped_mid_line = gen.split('"Prediction"')[0].replace("negative overall", "my Prediction")
    chain, own = chain_with_label(stopped_mid_line.rstrip('"\n'), Label.NEGATIVE)
    assert chain.parsed and chain.final_conclusion == "my" and chain.prediction == "negative"
    chain, own = chain_with_label("garbage", Label.NEGATIVE)
    assert not chain.parsed and chain.prediction == "negative" and own is None
    assert "Text_analysis" in chain.missing


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
def test_backend_generates_a_parseable_chain_when_the_model_knows_one(family, tiny_qwen_dir, tiny_smolvlm_dir,
                                                                      tmp_path):
    """Real generation through the backend: a tiny model memorises one chain (and the label
    answer), then ``predict`` must return exactly that chain, parsed, agreeing with the label."""
    from model.backends.tiny.build import SAMPLE_CHAINS
    from tests.support.tiny_helpers import overfit_tiny

    src = tiny_qwen_dir if family == "qwen2_5_vl" else tiny_smolvlm_dir
    post = PostInput("Best day ever at the beach with friends!", image=_img("RGB", (80, 60)))
    target = SAMPLE_CHAINS[0]  # a positive chain
    out, loss = overfit_tiny(
        src,
        [(post, reasoning_prompt(post), target.render()), (post, label_prompt(post), "positive")],
        tmp_path / "taught",
        steps=80,
    )
    assert loss < 0.05
    student = load_student(f"hf:{out}", image_size=56, max_new_tokens=160)
    pred = student.predict([post])[0]
    assert pred.label is Label.POSITIVE and pred.confidence > 0.9
    chain = pred.chain
    assert chain.parsed and chain.missing == ()
    assert chain.fields() == target.fields()
    assert pred.extra["chain_agrees"] is True and pred.extra["chain_label"] == "positive"
    # decoding stopped at the Prediction key: far fewer tokens than the budget
    assert 0 < pred.generated_tokens < 160


def test_sequence_scoring_equals_first_token_for_single_token_words(tiny_dir):
    posts = _posts()
    first = load_student(f"hf:{tiny_dir}", chain=False, image_size=56, label_scoring="first_token")
    seq = load_student(f"hf:{tiny_dir}", chain=False, image_size=56, label_scoring="sequence")
    assert all(len(ids) == 1 for ids in first.label_word_ids)
    for a, b in zip(first.classify(posts), seq.classify(posts)):
        assert a.label == b.label and a.prompt_tokens == b.prompt_tokens
        for k in a.probabilities:
            assert a.probabilities[k] == pytest.approx(b.probabilities[k], abs=1e-5)


@pytest.fixture(scope="module")
def small_vocab_qwen_dir(tmp_path_factory):
    """A tiny Qwen whose tokenizer splits the label words, 'neutral' and 'negative' sharing 'ne'."""
    from model.backends.tiny.build import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen-small-vocab"), vocab_size=300)


def test_multi_token_label_words_with_shared_first_token(small_vocab_qwen_dir):
    spec = f"hf:{small_vocab_qwen_dir}"
    with pytest.raises(ValueError, match="share a first token"):
        load_student(spec, label_scoring="first_token")
    student = load_student(spec, image_size=56, max_new_tokens=8)  # auto -> sequence scoring
    assert not student.first_token_exact
    assert [len(ids) for ids in student.label_word_ids] != [1, 1, 1]
    posts = _posts()
    preds = student.predict(posts)
    _check(preds, len(posts), chain=True)

    # independent reference: one unbatched forward per (post, word), log-likelihood of the word
    for post, pred in zip(posts, preds):
        lls = []
        for word_ids in student.label_word_ids:
            enc = encode_batch(student.processor, [post], [label_prompt(post)], family=student.family, image_size=56)
            ids = torch.tensor([word_ids])
            inputs = dict(enc)
            inputs["input_ids"] = torch.cat([enc["input_ids"], ids], dim=1)
            inputs["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(ids)], dim=1)
            if "mm_token_type_ids" in inputs:
                inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(ids)], dim=1)
            with torch.no_grad():
                logp = student.model(**inputs).logits[0].log_softmax(-1)
            n = len(word_ids)
            lls.append(float(logp[-(n + 1):-1].gather(-1, ids[0].unsqueeze(-1)).sum()))
        ref = torch.tensor(lls).softmax(-1).tolist()
        got = [pred.probabilities[l.value] for l in LABELS]
        assert got == pytest.approx(ref, abs=1e-4)
        alone = student.classify([post])[0]
        assert [alone.probabilities[l.value] for l in LABELS] == pytest.approx(ref, abs=1e-4)


def test_hub_layout_processor_files(tiny_qwen_dir, tmp_path):
    """A directory laid out like the hub's Qwen2.5-VL repos (preprocessor_config.json with
    min/max_pixels and the torchvision class name, chat_template.json) loads and predicts."""
    import json
    import shutil

    from model.backends.tiny.build import QWEN_CHAT_TEMPLATE

    d = tmp_path / "hub-like"
    shutil.copytree(tiny_qwen_dir, d)
    (d / "chat_template.jinja").unlink()
    (d / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    (d / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}))
    student = load_student(f"hf:{d}", max_new_tokens=4)
    assert student.image_size == 280  # the method's default resolution, not the hub's max_pixels
    assert student.processor.chat_template == QWEN_CHAT_TEMPLATE
    pred = student.predict([PostInput("x", image=_img("RGB", (500, 300)))])[0]
    # 280x280 budget: 500x300 (w x h) -> 336x196 (sides floored to multiples of 28) -> 12x7 = 84 tokens
    enc = encode_batch(student.processor, [PostInput("x", image=_img("RGB", (500, 300)))], ["x"],
                       family="qwen2_5_vl", image_size=280)
    assert int((enc["input_ids"] == student.model.config.image_token_id).sum()) == 84
    _check([pred], 1, chain=True)


def test_bf16_option(tiny_qwen_dir):
    student = load_student(f"hf:{tiny_qwen_dir}", dtype="bf16", image_size=56, max_new_tokens=4)
    assert next(student.model.parameters()).dtype == torch.bfloat16 and student.info["dtype"] == "bfloat16"
    _check(student.predict(_posts()[:2]), 2, chain=True)


def test_missing_models_fail_fast_with_a_clear_message(monkeypatch, tmp_path):
    import huggingface_hub.constants

    with pytest.raises(FileNotFoundError, match="not found"):
        load_student(f"hf:{tmp_path / 'absent'}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download sghn/MulCoT-RD-3B"):
        load_student("mulcot-rd-3b")


def test_model_version_follows_the_weights(tiny_qwen_dir, tmp_path):
    from model.backends.tiny.build import build_tiny_qwen2_5_vl

    other = build_tiny_qwen2_5_vl(tmp_path / "seed1", seed=1)
    a = load_student(f"hf:{tiny_qwen_dir}", chain=False)
    b = load_student(f"hf:{tiny_qwen_dir}", chain=False)
    c = load_student(f"hf:{other}", chain=False)
    assert a.version == b.version and a.version != c.version
    pred = a.predict([PostInput("x")])[0]
    assert pred.model_version == a.version and pred.model_name == f"hf:{tiny_qwen_dir}"


def test_big_photos_are_shrunk_before_preprocessing(tiny_qwen_student):
    big = Image.new("RGB", (4000, 3000), (10, 120, 200))
    small = prepare_image(big, max_side=560)
    assert small.size == (560, 420) and big.size == (4000, 3000)  # the caller's image is untouched
    same_shape = Image.new("RGB", (400, 300), (10, 120, 200))
    a = encode_batch(tiny_qwen_student.processor, [PostInput("x", image=big)], ["x"], family="qwen2_5_vl",
                     image_size=56)
    b = encode_batch(tiny_qwen_student.processor, [PostInput("x", image=same_shape)], ["x"], family="qwen2_5_vl",
                     image_size=56)
    assert a["image_grid_thw"].tolist() == b["image_grid_thw"].tolist()


def test_static_cache_option_gives_the_same_chains(tiny_qwen_dir):
    posts = _posts()[:3]
    dynamic = load_student(f"hf:{tiny_qwen_dir}", image_size=56, max_new_tokens=12)
    static = load_student(f"hf:{tiny_qwen_dir}", image_size=56, max_new_tokens=12, cache_implementation="static")
    assert static.cache_implementation == "static"
    want, got = dynamic.predict(posts), static.predict(posts)
    assert [p.chain.raw for p in got] == [p.chain.raw for p in want]
    assert [p.generated_tokens for p in got] == [p.generated_tokens for p in want]
