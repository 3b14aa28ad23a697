"""Target-aware inputs of the compact classifier: target marks (``ClassifierConfig.mark_target``:
the aspect's mentions wrapped in ``<< >>``) and target pooling (``target_pool``: the encoder
states at those mentions pooled), each only for classifiers trained that way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from model.backends.compact.text import ClassifierConfig, mark_target, minilm_path, pair_inputs
from training.compact.features import Batches
from training.data import Example


def test_every_mention_is_marked_case_insensitively():
    text = "Charlotte hornets visit Greensboro ; charlotte fans cheer"
    assert mark_target(text, "Charlotte") == "<< Charlotte >> hornets visit Greensboro ; << charlotte >> fans cheer"


def test_regex_characters_in_the_aspect_are_literal():
    assert mark_target("Loving C++ (and C) today", "C++") == "Loving << C++ >> (and C) today"
    assert mark_target("price $5.00 now", "$5.00") == "price << $5.00 >> now"


def test_unmentioned_or_empty_aspect_leaves_the_text_alone():
    assert mark_target("nothing here", "Paris") == "nothing here"
    assert mark_target("nothing here", "  ") == "nothing here"


def test_pair_inputs_marks_only_when_asked_and_only_aspect_posts():
    assert pair_inputs("I love Paris", "Paris", None) == ("Paris", "I love Paris")
    assert pair_inputs("I love Paris", "Paris", ["tower"], True) == ("Paris", "I love << Paris >> [image: tower]")
    assert pair_inputs("I love Paris", None, None, True) == ("the whole post", "I love Paris")


def test_classifier_json_without_the_field_reads_as_unmarked():
    old = ClassifierConfig().to_dict()
    del old["mark_target"], old["target_pool"]  # classifiers saved before the fields existed
    cfg = ClassifierConfig(**json.loads(json.dumps(old)))
    assert cfg.mark_target is False and cfg.target_pool is False


def test_assistant_reads_posts_in_its_own_format():
    tok = AutoTokenizer.from_pretrained(minilm_path())
    student_cfg, assistant_cfg = ClassifierConfig(mark_target=True), ClassifierConfig()
    assert student_cfg.input_format() != assistant_cfg.input_format()
    assert assistant_cfg.input_format() == ClassifierConfig(label_bias=(1.0, 0.0, 0.0)).input_format()
    ex = Example(id="x", text="I love Paris but not London", aspect="London", label="negative", image_path=None)
    b = Batches([ex], {}, tok, student_cfg)
    marked, imgs, has = b.encode([ex])
    plain, _, _ = b.encode([ex], assistant_cfg)
    words = tok.convert_ids_to_tokens(marked["input_ids"][0])
    assert words.count("<") == 2 and words.count(">") == 2
    assert "<" not in tok.convert_ids_to_tokens(plain["input_ids"][0])
    assert imgs.shape == (1, student_cfg.image_dim) and np.all(has.numpy() == 0.0)


def test_served_classifier_marks_only_when_its_config_says_so(tmp_path):
    """The compact backend reads ``mark_target`` from each route's classifier json."""
    import shutil

    from model import PostInput, load_student
    from model.loading import DEFAULT_WEIGHTS

    marked = tmp_path / "marked"
    shutil.copytree(DEFAULT_WEIGHTS, marked)
    cfg_path = marked / "classifier_aspect.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["mark_target"] = True
    cfg_path.write_text(json.dumps(cfg))
    plain, marked_student = load_student("default"), load_student(f"compact:{marked}")
    post = PostInput("Charlotte hornets visit Greensboro for the league meeting", aspect="Charlotte", id="m1")
    whole = PostInput("Charlotte hornets visit Greensboro", id="m2")  # post level: the unmarked post route
    (p_plain, w_plain), (p_marked, w_marked) = plain.classify([post, whole]), marked_student.classify([post, whole])
    # one mention, four more word pieces: "<", "<", ">", ">"
    assert p_marked.prompt_tokens == p_plain.prompt_tokens + 4
    assert w_marked.prompt_tokens == w_plain.prompt_tokens


# ---- target pooling (ClassifierConfig.target_pool)

def _tok():
    return AutoTokenizer.from_pretrained(minilm_path())


def test_target_mask_covers_the_mentions_in_the_text_only():
    from model.backends.compact.text import encode_pairs

    cfg = ClassifierConfig(target_pool=True)
    text = "Emma Watson , Jennifer Lawrence and EMMA WATSON again"
    posts = [(text, "Emma Watson", ["hat"]), ("no aspect here", None, None)]
    enc = encode_pairs(_tok(), posts, cfg)
    pieces = _tok().convert_ids_to_tokens(enc["input_ids"][0])
    marked = [(j, p) for j, p in enumerate(pieces) if enc["target_mask"][0, j] > 0]
    assert [p for _, p in marked] == ["emma", "watson", "emma", "watson"]
    first_sep = pieces.index("[SEP]")
    assert all(j > first_sep for j, _ in marked)  # the target segment itself is not pooled
    assert enc["target_mask"][1].sum() == 0
    assert "target_mask" not in encode_pairs(_tok(), posts, ClassifierConfig())


def test_posts_without_a_mention_pool_the_mean_instead():
    import torch

    from model.backends.compact.text import CompactClassifier, encode_pairs

    torch.manual_seed(0)
    cfg = ClassifierConfig(target_pool=True, dropout=0.0)
    model = CompactClassifier(cfg).eval()
    enc = encode_pairs(_tok(), [("a quiet day in town", "Paris", None)], cfg)
    assert enc["target_mask"].sum() == 0
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], torch.zeros(1, 1280), torch.zeros(1))
    with torch.inference_mode():
        fallback = model(*args, enc["target_mask"])
        whole = model(*args, enc["attention_mask"].float())  # pooling "at" every token = the mean
    assert torch.allclose(fallback, whole, atol=1e-5)
    with pytest.raises(ValueError, match="target_mask"):
        model(*args)
