"""The steering op as one fused, in-place Triton kernel per (layer, site), for CUDA devices.

`steering_delta` in torch runs one gather, one reduction and one update per channel: under Inductor that is
several kernels per channel, and at decode batch sizes each kernel costs about as much as it would for a
thousand tokens (launch- and latency-bound). This kernel does a token row per program: it reads the row's
slot, and a row with slot 0 (unsteered, or padding) does nothing else: no read, no write of the stream. A
steered row keeps the stream in fp32 registers, applies its K channels in order and writes `target + delta`
back in place. Same formula, same tables as the torch op.

Registered as `steerserve::steer_fused_in_place` (the plugin's own library, `steering.worker.ops.LIBRARY`, never
`vllm`) with a fake implementation, so torch.compile and CUDA-graph capture treat it as one opaque kernel that
mutates `target` and reads the tables' current contents on every replay. Hidden sizes above `MAX_HIDDEN` use
the torch op.
"""

from __future__ import annotations

import functools

import torch

from steering.worker.ops import LIBRARY

MAX_HIDDEN = 16384  # one row per program, held in registers


@functools.cache
def available() -> bool:
    """Triton importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    _register()
    return True


def steer_in_place(
    target: torch.Tensor,
    extra: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
) -> None:
    """`target += steering_delta(target + extra, ...)` in one kernel (`extra` may be None); slot-0 rows untouched."""
    op = torch.ops.steerserve.steer_fused_in_place
    op(target, extra, token_slot, token_gate, directions, coefficients, term_index)


@functools.cache
def _kernel() -> object:
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator, unused-ignore]
    def steer_in_place_kernel(  # type: ignore[no-untyped-def, unused-ignore]  # Triton reads annotations
        target_ptr,
        extra_ptr,
        slot_ptr,
        gate_ptr,
        dir_ptr,
        coef_ptr,
        index_ptr,
        hidden,
        stride_target,
        stride_extra,
        stride_gate,
        HAS_EXTRA: tl.constexpr,
        K: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        slot = tl.load(slot_ptr + row)
        if slot != 0:  # slot 0 (unsteered or padding): nothing to read or write
            offs = tl.arange(0, BLOCK)
            mask = offs < hidden
            target = tl.load(target_ptr + row * stride_target + offs, mask=mask, other=0.0)
            t32 = target.to(tl.float32)
            x = t32
            if HAS_EXTRA:
                x = x + tl.load(extra_ptr + row * stride_extra + offs, mask=mask, other=0.0).to(tl.float32)
            delta = tl.zeros([BLOCK], dtype=tl.float32)
            for k in tl.static_range(K):
                channel = slot * K + k
                direction = tl.load(dir_ptr + channel * hidden + offs, mask=mask, other=0.0).to(tl.float32)
                term = tl.load(index_ptr + channel)
                gate = tl.load(gate_ptr + row * stride_gate + term).to(tl.float32)
                c = tl.load(coef_ptr + channel * 2)
                b = tl.load(coef_ptr + channel * 2 + 1)
                proj = tl.sum((x + delta) * direction, axis=0)
                delta += gate * (c + b * proj) * direction
            tl.store(target_ptr + row * stride_target + offs, (t32 + delta).to(target.dtype), mask=mask)

    return steer_in_place_kernel


def _launch(
    target: torch.Tensor,
    extra: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
) -> None:
    import triton

    n, hidden = target.shape
    if n == 0:
        return
    rows = target if target.stride(-1) == 1 else target.contiguous()  # vLLM's hidden states already are
    if extra is not None and extra.stride(-1) != 1:
        extra = extra.contiguous()
    block = triton.next_power_of_2(hidden)
    kernel = _kernel()
    kernel[(n,)](  # type: ignore[index]
        rows,
        extra if extra is not None else rows,
        token_slot,
        token_gate,
        directions.contiguous(),
        coefficients.contiguous(),
        term_index.contiguous(),
        hidden,
        rows.stride(0),
        extra.stride(0) if extra is not None else 0,
        token_gate.stride(0),
        HAS_EXTRA=extra is not None,
        K=directions.shape[1],
        BLOCK=block,
        num_warps=max(1, min(16, block // 256)),
    )
    if rows is not target:
        target.copy_(rows)


def _fake(*_args: object) -> None:
    return None


LIBRARY.define(  # type: ignore[no-untyped-call]
    "steer_fused_in_place(Tensor(a!) target, Tensor? extra, Tensor token_slot, Tensor token_gate, "
    "Tensor directions, Tensor coefficients, Tensor term_index) -> ()"
)
torch.library.register_fake("steerserve::steer_fused_in_place", _fake, lib=LIBRARY)


@functools.cache
def _register() -> None:
    LIBRARY.impl("steer_fused_in_place", _launch, "CUDA")  # type: ignore[no-untyped-call]
