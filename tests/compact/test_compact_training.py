"""The compact student's training stages end to end on a few real posts, then loading the
result through ``load_student("compact:<dir>")``."""

from __future__ import annotations

import json

import pytest

from model import load_student
from training.compact.classifier import specialise_routes, train_classifier
from training.compact.explainer import train_explainer
from training.compact.export import export_student
from training.compact.recipe import CompactRecipe


@pytest.mark.data
@pytest.mark.slow
def test_compact_stages_end_to_end(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_DATA_DIR", str(data_dir))
    r = CompactRecipe(out=str(tmp_path / "run"), limit=8, epochs=1, batch_size=8, explainer_epochs=1,
                      explainer_batch_size=4)
    logs = []
    run = tmp_path / "run"
    clf = train_classifier(r, run, logs.append)
    assert clf["train_n"] == 24 and clf["best"]["epoch"] == 0
    assert 0.0 <= clf["best"]["dev_mean_accuracy"] <= 1.0
    # one classifier per route, each chosen on its own dev set, with calibrated logit offsets
    assert set(clf["routes"]) == {"aspect", "post"}
    for route in ("aspect", "post"):
        saved = json.loads((run / f"classifier_{route}.json").read_text())
        assert saved["label_bias"] == clf["routes"][route]["calibration"]["label_bias"]
    # a route continued on its own domain: kept only if its tuned dev score improves
    # (2 epochs, and the average of both tried as a third candidate)
    r.specialise, r.specialise_epochs, r.average_last = {"post": ["mvsa_single/train.jsonl"]}, 2, 2
    spec = specialise_routes(r, run, logs.append)
    post = spec["post"]
    assert post["train_n"] == 8 and post["kept_epoch"] in (None, 0, 1, "average of the last 2")
    assert post["average"]["epochs_averaged"] == 2
    assert post["average"]["kept"] == (post["kept_epoch"] == "average of the last 2")
    assert tuple(post["result"]["dev_after"].values()) >= tuple(post["start"]["dev_after"].values())
    saved = json.loads((run / "classifier_post.json").read_text())
    assert saved["label_bias"] == post["result"]["label_bias"]
    assert any(rec.get("stage") == "specialise_post" and "dev_after" in rec for rec in logs)
    # distillation from a frozen assistant classifier (here: the run just trained)
    r2 = CompactRecipe(out=str(tmp_path / "run2"), limit=8, epochs=1, batch_size=8, lam=0.3, temperature=2.0,
                       assistant=str(run))
    clf2 = train_classifier(r2, tmp_path / "run2", logs.append)
    assert (tmp_path / "run2" / "classifier.safetensors").exists() and clf2["train_n"] == 24
    exp = train_explainer(r, run, logs.append)
    assert exp["train_n"] > 0
    assert 0 < exp["train_n"] <= 8
    dest = export_student(run, tmp_path / "student")
    meta = json.loads((dest / "student.json").read_text())
    assert meta["image_size"] == 160
    assert meta["classifiers"] == {"aspect": "classifier_aspect", "post": "classifier_post"}
    student = load_student(f"compact:{dest}", max_new_tokens=24)
    from training.data import load_examples

    ex = load_examples(data_dir / "t15" / "test.jsonl", limit=2)
    preds = student.predict([e.post() for e in ex])
    assert [p.chain.prediction for p in preds] == [p.label.value for p in preds]
    # the chain writer on grounded targets (issue 14): the exported student's own evidence lines
    # in context, and its Conclusion started from the Conflict line
    import shutil

    from model.backends.compact.grounded import AGREE_START, CONFLICT_START, NO_IMAGE_START

    r3 = CompactRecipe(out=str(tmp_path / "run3"), limit=8, explainer_epochs=1, explainer_batch_size=4,
                       explainer={"grounded_targets": True}, grounding_student=f"compact:{dest}")
    (tmp_path / "run3").mkdir()
    exp3 = train_explainer(r3, tmp_path / "run3", logs.append)
    assert exp3["grounded_targets"]["posts"] > 0 and exp3["train_n"] > 0
    for f in ("explainer.safetensors", "explainer.json"):
        shutil.copy2(tmp_path / "run3" / f, dest / f)
    grounded = load_student(f"compact:{dest}", max_new_tokens=24)
    for p in grounded.predict([e.post() for e in ex]):
        assert p.chain.final_conclusion.startswith((AGREE_START, CONFLICT_START, NO_IMAGE_START))

