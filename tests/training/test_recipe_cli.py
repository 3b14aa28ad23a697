"""Recipes (pydantic, YAML/TOML, dry run) and the click CLI (via CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.support.mulcot_train_synth import write_dataset
from training.cli import data, distill
from training.mulcot.recipe import Recipe, check_recipe, load_recipe, schema_rows
from training.mulcot.run import run_recipe

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"


def _tiny_recipe(tmp_path: Path, **extra) -> dict:
    train = write_dataset(tmp_path / "d", n=12, text_only_every=5)
    dev = write_dataset(tmp_path / "d", n=6, name="dev.jsonl", seed=1)
    label_only = write_dataset(tmp_path / "d", n=3, name="lo.jsonl", seed=2, chains=False)
    raw = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    raw["out_dir"] = str(tmp_path / "run")
    raw["data"].update(train=str(train), dev=str(dev), test=str(dev), label_only=str(label_only))
    raw.update(extra)
    return raw


def test_example_recipes_validate():
    paper = load_recipe(RECIPES / "paper-t15.yaml")
    assert paper.teacher.model == "Qwen/Qwen2.5-VL-72B-Instruct" and paper.teacher.backend == "endpoint"
    assert paper.assistant.model.endswith("7B-Instruct") and paper.student.model.endswith("3B-Instruct")
    assert (paper.student.lam, paper.student.T) == (0.3, 2.0)
    assert paper.assistant.lora.r == 16 and paper.assistant.lora.alpha == 32
    assert paper.assistant.train.batch_size * paper.assistant.train.grad_accum == 40
    tiny = load_recipe(RECIPES / "tiny.yaml")
    assert tiny.assistant.model.startswith("tiny:")


def test_recipe_validation_errors_and_overrides(tmp_path: Path):
    raw = _tiny_recipe(tmp_path)
    Recipe.model_validate(raw)
    with pytest.raises(ValueError, match="extra"):
        Recipe.model_validate({**raw, "studnet": {}})
    bad = json.loads(json.dumps(raw))
    bad["teacher"] = {"enabled": True, "backend": "endpoint"}
    with pytest.raises(ValueError, match="base_url"):
        Recipe.model_validate(bad)
    bad = json.loads(json.dumps(raw))
    bad["student"]["lam"] = 1.5
    with pytest.raises(ValueError):
        Recipe.model_validate(bad)
    # TOML works the same, and --set style overrides apply
    import tomllib  # noqa: F401  (reader side); write TOML by hand for the simple fields

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = load_recipe(p, ["student.lam=0.5", "assistant.train.epochs=3", "name=x"])
    assert r.student.lam == 0.5 and r.assistant.train.epochs == 3 and r.name == "x"
    toml = tmp_path / "r.toml"
    toml.write_text(
        f'name = "t"\nout_dir = "{tmp_path / "o"}"\n[data]\ntrain = "{raw["data"]["train"]}"\ndev = "{raw["data"]["dev"]}"\n'
        '[teacher]\nenabled = false\n[assistant]\nmodel = "tiny:qwen2_5_vl"\n[student]\nmodel = "tiny:qwen2_5_vl"\nT = 3.0\n'
    )
    rt = load_recipe(toml)
    assert rt.student.T == 3.0 and rt.student.lam == 0.3 and rt.assistant.train.lr == 3e-4


def test_schema_has_descriptions():
    rows = {r[0]: r for r in schema_rows()}
    assert "student.lam" in rows and "KL" in rows["student.lam"][3]
    assert "assistant.train.grad_accum" in rows
    assert all(desc for path, _, _, desc in rows.values() if "." in path)


def test_dry_run_is_fast_and_catches_problems(tmp_path: Path):
    import time

    raw = _tiny_recipe(tmp_path)
    r = Recipe.model_validate(raw)
    t0 = time.perf_counter()
    out = run_recipe(r, dry_run=True)
    assert time.perf_counter() - t0 < 5
    assert out["dry_run"] and out["datasets"]["train"]["n"] == 12 and out["datasets"]["train"]["with_chain"] == 12
    assert not Path(raw["out_dir"]).exists()  # nothing was trained or written
    # a missing image and a missing file are reported together
    train = Path(raw["data"]["train"])
    next((train.parent / "images").iterdir()).unlink()
    raw["data"]["dev"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError) as e:
        check_recipe(Recipe.model_validate(raw))
    assert "image(s) missing" in str(e.value) and "data.dev" in str(e.value)


def test_cli_dry_run_schema_and_errors(tmp_path: Path):
    raw = _tiny_recipe(tmp_path)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    res = runner.invoke(distill, ["run", str(p), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run OK" in res.output
    res = runner.invoke(distill, ["run", "--schema"])
    assert res.exit_code == 0 and "student.lam" in res.output
    raw["student"]["bogus"] = 1
    p.write_text(yaml.safe_dump(raw))
    res = runner.invoke(distill, ["run", str(p), "--dry-run"])
    assert res.exit_code != 0 and "bogus" in res.output
    res = runner.invoke(distill, ["--help"])
    for verb in ("teacher", "assistant", "augment", "student", "evaluate", "run", "compact"):
        assert verb in res.output


def test_cli_compact_options_come_from_the_recipe(tmp_path: Path):
    """``distill compact``: each scalar CompactRecipe field is a typed option whose help is the
    field's description; bad values and unknown --set keys are refused before any training."""
    from training.compact.recipe import CompactRecipe

    runner = CliRunner()
    res = runner.invoke(distill, ["compact", "--help"])
    assert res.exit_code == 0, res.output
    assert "--epochs INTEGER" in res.output and "--lam FLOAT" in res.output and "--no-calibrate" in res.output
    assert CompactRecipe.model_fields["head_lr"].description.split()[0] in res.output
    res = runner.invoke(distill, ["compact", "--schema"])
    assert res.exit_code == 0 and "specialise_epochs" in res.output
    res = runner.invoke(distill, ["compact", "--epochs", "two"])
    assert res.exit_code != 0 and "not a valid integer" in res.output
    res = runner.invoke(distill, ["compact", "--set", "bogus=1", "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "bogus" in res.output
    assert not (tmp_path / "run").exists()


def test_cli_data_stats(tmp_path: Path):
    path = write_dataset(tmp_path / "d", n=9, text_only_every=4)
    res = CliRunner().invoke(data, ["stats", str(path), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["n"] == 9 and stats["labels"] == {"positive": 3, "neutral": 3, "negative": 3}
    assert stats["with_image"] == 6 and stats["image_width"]["min"] == 48 + 8  # rows 1.. widths 48 + (i%4)*8
    assert stats["chain_parse_rate"] == 1.0 and stats["chain_gold_agreement"] == 1.0
    res = CliRunner().invoke(data, ["stats", str(path)])
    assert res.exit_code == 0 and "dataset card" in res.output and "chain parse rate" in res.output


def test_cli_evaluate_noop(tmp_path: Path):
    path = write_dataset(tmp_path / "d", n=6)
    out = tmp_path / "ev"
    res = CliRunner().invoke(distill, ["evaluate", "--student", "noop", "--data", str(path), "--out", str(out),
                                       "--limit", "4", "--batch-size", "2", "--no-embeddings"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["n"] == 4 and rep["chain_parse_rate"] == 1.0
    assert (out / "confusion.png").exists() and len((out / "predictions.jsonl").read_text().splitlines()) == 4
    res = CliRunner().invoke(distill, ["evaluate", "--student", "noop", "--data", str(path), "--no-chain"])
    assert res.exit_code == 0 and "accuracy" in res.output


def test_run_recipe_end_to_end_synthetic(tmp_path: Path):
    """All stages through `mulcot distill run` on tiny models (teacher via the in-process HF backend)."""
    raw = _tiny_recipe(tmp_path)
    # 4 train posts lose their chains: the (random, tiny) HF teacher is asked about them
    train = Path(raw["data"]["train"])
    rows = [json.loads(l) for l in train.read_text().splitlines()]
    for r in rows[:4]:
        r.pop("teacher_cot")
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw["teacher"] = {"enabled": True, "backend": "hf", "model": "tiny:qwen2_5_vl", "max_guided": 1, "max_tokens": 24}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(distill, ["run", str(p)])
    assert res.exit_code == 0, res.output
    run = Path(raw["out_dir"])
    teacher_rows = [json.loads(l) for l in (run / "teacher" / "chains.jsonl").read_text().splitlines()]
    assert len(teacher_rows) == 4 and all(r["attempts"] in (1, 2) for r in teacher_rows)
    for stage in ("assistant", "student"):
        card = json.loads((run / stage / "model_card.json").read_text())
        assert card["recipe"]["name"] == "tiny" and card["metrics"]["best"]["dev_accuracy"] is not None
    assert json.loads((run / "augment" / "summary.json").read_text())["processed"] >= 3
    rep = json.loads((run / "eval" / "dev" / "report.json").read_text())
    assert rep["n"] == 6 and 0 <= rep["accuracy"] <= 1 and rep["bleu4"] is not None
    assert (run / "eval" / "dev" / "loss_curves.png").exists()
    summary = json.loads((run / "run_summary.json").read_text())
    assert set(summary["stages"]) >= {"teacher", "assistant", "augment", "student", "evaluate"}
    # a rerun skips the finished stages
    res = CliRunner().invoke(distill, ["run", str(p), "--stage", "assistant", "--stage", "student"])
    assert res.exit_code == 0 and "skipped" in res.output


@pytest.mark.data
def test_tiny_recipe_on_real_posts(data_dir: Path, tmp_path: Path):
    """The shipped tiny recipe end to end on a dozen real Twitter-2015 posts."""
    r = load_recipe(RECIPES / "tiny.yaml", [f"out_dir={tmp_path / 'run'}"])
    summary = run_recipe(r, progress=False)
    ev = summary["stages"]["evaluate"]["t15/test"]
    assert ev["n"] == 6 and ev["accuracy"] is not None and ev["posts_per_s"] > 0
    assert (tmp_path / "run" / "student" / "best" / "adapter_model.safetensors").exists()
    assert summary["stages"]["augment"]["processed"] == 4
