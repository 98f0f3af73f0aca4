"""The reflection recipe for real models (benchmarks/reflection_recipe.sh), run unchanged end to end on a tiny
random Qwen2 with <think> markers: real server, extraction job over HTTP, A/B run with report and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import free_port

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "clients" / "fixtures" / "math500_test.jsonl"


def test_recipe_end_to_end_on_tiny_qwen2(tiny_qwen2: Path, tmp_path: Path) -> None:
    steerserve = Path(sys.executable).parent / "steerserve"
    env = {
        **os.environ,
        "MODEL": str(tiny_qwen2),
        "EXTRACT_SET": str(FIXTURE),
        "EVAL_SET": str(FIXTURE),
        "N_EXTRACT": "2",
        "SAMPLES_EXTRACT": "24",
        "N_EVAL": "2",
        "SAMPLES_EVAL": "3",
        "MAX_TOKENS": "160",
        "TEMPERATURE": "1.0",
        "TOP_P": "1.0",
        "STRENGTHS": "-1,0,1",
        "RANDOM_STRENGTHS": "1",
        "PORT": str(free_port()),
        "SERVE_ARGS": "--enforce-eager --max-model-len 512 --dtype float32 --reasoning-parser deepseek_r1",
        "STEERSERVE": str(steerserve),
    }
    out = tmp_path / "run"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "reflection_recipe.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (out / "server.log").read_text() if (out / "server.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    job = json.loads((out / "extract.json").read_text())
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["vector"]["id"] == "reflection" and len(result["scan"]) == 4
    assert result["counts"]["reflective_used"] >= 2 and result["counts"]["non_reflective_used"] >= 2
    summary = json.loads((out / "ab" / "summary.json").read_text())
    assert [a["name"] for a in summary["arms"]] == ["reflection@-1", "reflection@0", "reflection@1", "random@1"]
    assert all(a["n"] == 6 for a in summary["arms"])
    assert (out / "ab" / "accuracy_vs_tokens.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "ab" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(r["reasoning_tokens"] is not None for r in rows)  # <think> markers seen
