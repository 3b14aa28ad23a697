"""Multi-process training through accelerate: 2 CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mulcot_train_synth import write_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 30 s on 2 cores: two processes each import torch + transformers
def test_assistant_ddp_two_cpu_processes_gloo(tmp_path: Path, tiny_qwen: Path):
    train = write_dataset(tmp_path / "d", n=8)
    dev = write_dataset(tmp_path / "d", n=3, name="dev.jsonl", seed=1)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'training'}",
           "HF_HUB_OFFLINE": "1"}
    # torchrun starts the 2 processes (`accelerate launch --cpu` runs a single process unless MPI is
    # used); inside, accelerate.Accelerator(cpu=True) sees the torchrun env and sets up MULTI_CPU + gloo.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "training" / "ddp_worker.py"), str(tiny_qwen), str(train), str(dev), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert {r["rank"] for r in ranks} == {0, 1} and all(r["world"] == 2 for r in ranks)
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    assert all(r["torch_backend"] == "gloo" for r in ranks)
    # 8 posts, batch 2 per process, 2 processes -> 2 optimizer steps per rank
    assert all(r["steps"] == 2 for r in ranks)
    # DDP all-reduced the gradients: both ranks hold identical trained weights, and they trained
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    assert all(r["lora_b_nonzero"] for r in ranks)
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["processes"] == 2
    assert (out / "best" / "adapter_model.safetensors").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
