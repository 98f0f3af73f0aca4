"""Tensor parallelism (vLLM CPU, TP=2) steers an MoE exactly like TP=1: the experts are sharded across the
ranks and the block's output is all-reduced before the layer returns, so every rank steers the same stream.
Runs `benchmarks/tensor_parallel.py` (one engine per process tree, as TP needs) on a tiny Qwen3-MoE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


def test_moe_with_tp2_equals_tp1_steered_and_unsteered(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tensor_parallel.py"), "--arch", "qwen3_moe"]
    cmd += ["--prompts", "4", "--max-tokens", "12", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=dict(os.environ), cwd=ROOT)
    result_file = tmp_path / "tensor_parallel_qwen3_moe.json"
    assert result_file.exists(), done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result.get("identical") == dict.fromkeys(
        ("unsteered", "add_residual", "project_mlp", "clamp_all_layers"), True
    ), result
    assert all(result["steering_changes_tokens"].values()), result
    assert done.returncode == 0
