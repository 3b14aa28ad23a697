"""The CV figures a student's routes were chosen by: written into its model card by
``training/compact/select.py export`` and reported by ``mulcot distill evaluate``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from model.loading import DEFAULT_WEIGHTS
from training.cli import distill


def test_default_model_card_holds_the_adopted_post_route_cv():
    cv = json.loads((DEFAULT_WEIGHTS / "model_card.json").read_text())["cv"]["post"]
    assert cv["k"] == 5 and cv["adopted"] == "mean of fine-tuned and baseline probabilities"
    routes = json.loads((DEFAULT_WEIGHTS / "student.json").read_text())["classifiers"]
    assert routes["post"] == ["classifier_post", "classifier_post_ft"]  # what that candidate is, as served
    c, b = cv["candidate"], cv["baseline"]
    assert len(c["acc_folds"]) == len(b["acc_folds"]) == 5
    # the adoption rule (docs/results.md): above the baseline by more than the larger spread, both measures
    for m in ("acc", "f1"):
        assert c[f"{m}_mean"] - b[f"{m}_mean"] > max(c[f"{m}_std"], b[f"{m}_std"])


def test_cv_verb_help():
    res = CliRunner().invoke(distill, ["cv", "-h"])
    assert res.exit_code == 0 and "mulcot distill cv" in res.output and "finetune" in res.output


@pytest.mark.data
def test_evaluate_reports_the_selection_cv(data_dir, tmp_path):
    res = CliRunner().invoke(distill, ["evaluate", "--student", "default", "--data",
                                       str(data_dir / "mvsa_single" / "dev.jsonl"), "--limit", "4", "--no-chain",
                                       "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cv"]["post"]["adopted"] == "mean of fine-tuned and baseline probabilities"
    assert "selection (post route, 5-fold CV" in res.output
