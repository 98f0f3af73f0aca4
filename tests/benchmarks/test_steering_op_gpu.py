"""benchmarks/steering_op_gpu.py keeps running: its correctness checks on CPU (the GPU run is committed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_checks_pass_and_write_reports(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "steering_op_gpu.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--check-only", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "steering_op_gpu.json").read_text())
    assert report["checks"] and all(c["ok"] and c["slot0_rows_unchanged"] for c in report["checks"])
    assert "| torch | bfloat16 |" in (tmp_path / "steering_op_gpu.md").read_text()
