"""``model.bench.run_model_bench`` and the GPU check script (``--tiny`` on CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from model.bench import run_model_bench, synthetic_posts

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_posts_are_deterministic_and_varied():
    a, b = synthetic_posts(12, seed=1), synthetic_posts(12, seed=1)
    assert [p.text for p in a] == [p.text for p in b]
    assert any(p.image is None for p in a) and any(p.image is not None for p in a)
    assert any(p.aspect for p in a) and any(not p.aspect for p in a)


def test_run_model_bench_on_tiny_hf(tiny_qwen_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run_model_bench(f"hf:{tiny_qwen_dir}", synthetic_posts(6), batch_size=4, image_size=56,
                             max_new_tokens=8, json_out=out)
    assert json.loads(out.read_text()) == result
    assert result["posts"] == 6 and result["batch_size"] == 4 and result["image_size"] == 56
    lo, lc = result["labels_only"], result["label_chain"]
    assert lo["posts"] == lc["posts"] == 6
    assert lo["generated_tokens"] == 0 and lo["label_chain_agreement"] is None
    assert 0 < lc["generated_tokens"] <= 6 * 8
    assert lc["label_chain_agreement"] == 1.0
    assert lo["posts_per_s"] > 0 and lc["posts_per_s"] > 0
    assert result["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "labels-only" in printed and "label+chain" in printed


def test_run_model_bench_on_noop_student():
    result = run_model_bench("noop", synthetic_posts(5), batch_size=2, print_table=False)
    assert result["label_chain"]["label_chain_agreement"] == 1.0
    assert result["label_chain"]["chains_parsed"] == 1.0


def test_gpu_check_script_runs_tiny_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("check_hf", ROOT / "deploy" / "gpu" / "check_hf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "check.json"
    result = mod.main(["--tiny", "--device", "cpu", "--n-posts", "4", "--batch-size", "2", "--image-size", "56",
                       "--max-new-tokens", "6", "--data-dir", str(tmp_path / "absent"), "--json-out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["shape"] == "tiny" and saved["posts"] == 4 and saved["posts_source"] == "synthetic"
    assert saved["label_chain"]["label_chain_agreement"] == 1.0
    assert saved["baseline_generate"]["posts"] == 4 and saved["baseline_generate"]["generated_tokens"] > 0
    assert result["labels_only"]["posts_per_s"] > 0
    assert "baseline model.generate" in capsys.readouterr().out


def test_gpu_check_script_bf16_path(tmp_path):
    """The bf16 path the GPU run takes (random init in bf16, scoring + generation), on CPU."""
    mod = _load_script("check_hf")
    result = mod.main(["--tiny", "--device", "cpu", "--dtype", "bf16", "--n-posts", "2", "--batch-size", "2",
                       "--image-size", "56", "--max-new-tokens", "4", "--data-dir", str(tmp_path), "--no-baseline"])
    assert result["dtype"] == "bfloat16"
    assert result["label_chain"]["posts"] == 2 and result["label_chain"]["label_chain_agreement"] == 1.0


def test_gpu_check_compare_alternates_both_vision_attentions(tmp_path):
    mod = _load_script("check_hf")
    result = mod.main(["--tiny", "--device", "cpu", "--n-posts", "4", "--batch-size", "2", "--image-size", "112",
                       "--max-new-tokens", "2", "--data-dir", str(tmp_path), "--no-baseline", "--compare"])
    assert result["vision_attention"] == "flash_packed_sdpa"
    cmp = result["compare_vision_attention"]
    assert len(cmp["packed"]["runs"]) == len(cmp["model"]["runs"]) == 3 and cmp["speedup"] > 0


def test_gpu_check_passes_student_options(tmp_path):
    mod = _load_script("check_hf")
    result = mod.main(["--tiny", "--device", "cpu", "--n-posts", "2", "--batch-size", "2", "--image-size", "56",
                       "--max-new-tokens", "3", "--data-dir", str(tmp_path), "--no-baseline",
                       "--option", "cache_implementation=static"])
    assert result["options"] == {"cache_implementation": "static"}
    assert result["label_chain"]["posts"] == 2


def test_gpu_check_config_is_the_3b_shape():
    """The hand-written config has Qwen2.5-VL-3B's parameter count (~3.75B) without allocating it."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from model.engine.checks.shapes import QWEN2_5_VL_3B  # the one 3B config, used by check_hf.py and the engine

    cfg = Qwen2_5_VLConfig(text_config=dict(QWEN2_5_VL_3B["text"]), vision_config=dict(QWEN2_5_VL_3B["vision"]),
                           tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 3.7e9 < n < 3.8e9, n


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "gpu" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.data
def test_gpu_check_on_real_images_subset(data_dir, tmp_path):
    """The GPU-session recipe end to end on CPU: copy a subset of real posts, run the check on it."""
    prep, check = _load_script("prepare_data"), _load_script("check_hf")
    assert prep.main(["--src", str(data_dir), "--out", str(tmp_path / "sub"), "--n", "3"]) == 3
    result = check.main(["--tiny", "--device", "cpu", "--n-posts", "3", "--batch-size", "3", "--image-size", "56",
                         "--max-new-tokens", "4", "--data-dir", str(tmp_path / "sub"), "--no-baseline"])
    assert result["posts"] == 3 and result["posts_with_image"] == 3
    assert result["posts_source"].endswith("t15/test.jsonl")
    assert "baseline_generate" not in result


def test_bench_model_comes_through_the_entry_point_group():
    """`mulcot bench model` is model.bench's command, found through the `mulcot.bench` entry points."""
    from click.testing import CliRunner

    from stream.cli import main

    res = CliRunner().invoke(main, ["bench", "model", "--model", "noop", "--posts", "4", "--batch-size", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["spec"] == "noop" and out["labels_only"]["posts"] == 4
    res = CliRunner().invoke(main, ["bench", "model", "--model", "compact:/nonexistent"])
    assert res.exit_code != 0 and "does not exist" in res.output
