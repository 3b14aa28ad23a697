"""The compact student's model selection (training/compact/select.py) on synthetic cached
features: the registry (short names, descriptions as aliases, one entry adds a candidate), the
CV table's rows and the adoption rule's flags, and export of a frozen head with its CV figures
into the model card. The figures on the real data sets are in docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from training.compact import select
from training.compact.select import CANDIDATES, register, resolve, table


def _fake_features(cache: Path, n: int = 90) -> None:
    """A features cache for ``mvsa_single`` whose text block carries the label (so every head
    learns it) and whose image blocks are noise (narrower than the real 1280 / 1000 columns: the
    heads take any width)."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    text = rng.normal(size=(n, 8)).astype(np.float32)
    text[np.arange(n), y] += 3.0
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / "mvsa_single_features_160.npz", ids=np.array([f"p{i}" for i in range(n)]), y=y, text=text,
             aspect=np.zeros((n, 0), np.float32), image=rng.normal(size=(n, 16)).astype(np.float32),
             logits=rng.normal(size=(n, 10)).astype(np.float32), has_image=np.ones(n, np.float32))


def test_registry_names_and_aliases():
    assert list(CANDIDATES)[0] == "baseline" and table("cv")[0] is table("ft")[0] is CANDIDATES["baseline"]
    assert [c.name for c in table("ft")] == ["baseline", "finetune", "mean", "tfidf"]
    # the long names that docs/results.md, the Makefile of before and the model cards quote
    for short, long in (("mean", "mean of fine-tuned and baseline probabilities"),
                        ("finetune", "fine-tuned MiniLM-LoRA + image"),
                        ("baseline", "baseline: logreg C=1 on text + image")):
        assert resolve(short) is resolve(long) is CANDIDATES[short]
    with pytest.raises(ValueError, match="no candidate 'nope'.*baseline"):
        resolve("nope")
    with pytest.raises(ValueError, match="registered already"):
        register("baseline", "another", lambda fold: None)


def test_cv_table_on_cached_features(tmp_path: Path):
    """``run`` scores every candidate of the table on the same folds; a candidate added with one
    ``register`` call appears in the table; the adoption rule is applied against the baseline."""
    _fake_features(tmp_path)

    def uniform(fold):
        return np.full((len(fold.test), 3), 1 / 3)

    register("uniform", "always the first label (a test entry)", uniform)
    try:
        rows = select.run("mvsa_single", tmp_path, k=3, seed=0)
    finally:
        CANDIDATES.pop("uniform")
    by = {r["candidate"]: r for r in rows}
    assert [r["candidate"] for r in rows] == [c.name for c in table("cv")] + ["uniform"]
    assert rows[0]["beats_baseline"] is None and all(len(r["acc_folds"]) == 3 for r in rows)
    assert by["baseline"]["acc_mean"] > 0.9 and by["baseline"]["name"] == "baseline: logreg C=1 on text + image"
    assert by["uniform"]["acc_mean"] == pytest.approx(1 / 3) and by["uniform"]["beats_baseline"] is False


def test_cv_verbs_run_and_export(tmp_path: Path):
    """``mulcot distill cv run`` writes the table; ``export --candidate baseline`` (the short
    name) saves the frozen head and records the table's figures in the model card; unknown and
    scored-only candidates are refused with one line."""
    from training.cli import distill

    cache, out = tmp_path / "cv", tmp_path / "student"
    _fake_features(cache)
    out.mkdir()  # a student directory (the export adds a route's classifier to it)
    runner = CliRunner()
    res = runner.invoke(distill, ["cv", "run", "mvsa_single", "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    assert "baseline: logreg C=1 on text + image" in res.output and "mlp-imagenet" in res.output
    res = runner.invoke(distill, ["cv", "export", "mvsa_single", "--cache", str(cache), "--candidate", "baseline",
                                  "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "classifier_post.json").read_text())["parts"] == ["text", "image"]
    card = json.loads((out / "model_card.json").read_text())["cv"]["post"]
    assert card["adopted"] == "baseline: logreg C=1 on text + image" and len(card["candidate"]["acc_folds"]) == 5
    for name, message in (("nope", "no candidate"), ("tfidf", "scored only")):
        res = runner.invoke(distill, ["cv", "export", "mvsa_single", "--cache", str(cache), "--candidate", name,
                                      "--out", str(out)])
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
