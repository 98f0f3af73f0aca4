"""The steering op as one fused Triton kernel per (layer, site), for CUDA devices.

`steering_delta` in torch runs one gather, one reduction and one update per channel: under Inductor that is
several kernels per channel, and at decode batch sizes each kernel costs about as much as it would for a
thousand tokens (launch- and latency-bound). This kernel does a token row per program: it reads the row's
slot, and a row with slot 0 (unsteered, or padding) only copies `target`; a steered row keeps the stream in
fp32 registers and applies its K channels in order. Same formula, same tables; the result is `target + delta`
with the delta accumulated in fp32.

Registered as the custom op `steerserve::steered_sum` (the plugin's own namespace, never `vllm`) with a fake
implementation, so torch.compile and CUDA-graph capture treat it as one opaque kernel that reads the tables'
current contents on every replay. Hidden sizes above `MAX_HIDDEN` use the torch op.
"""

from __future__ import annotations

import functools

import torch

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


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernel serves this tensor (a trace-time constant: device and hidden size)."""
    return x.is_cuda and x.shape[-1] <= MAX_HIDDEN and available()


def steered_sum(
    target: torch.Tensor,
    extra: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
) -> torch.Tensor:
    """`steering.ops.steered_sum` in one kernel (`extra` may be None)."""
    op = torch.ops.steerserve.steered_sum
    return op(target, extra, token_slot, token_gate, directions, coefficients, term_index)  # type: ignore[no-any-return]


@functools.cache
def _kernel() -> object:
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator, unused-ignore]
    def steered_sum_kernel(  # type: ignore[no-untyped-def, unused-ignore]  # Triton reads annotations
        target_ptr,
        extra_ptr,
        out_ptr,
        slot_ptr,
        gate_ptr,
        dir_ptr,
        coef_ptr,
        index_ptr,
        hidden,
        stride_target,
        stride_extra,
        stride_out,
        stride_gate,
        HAS_EXTRA: tl.constexpr,
        K: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < hidden
        target = tl.load(target_ptr + row * stride_target + offs, mask=mask, other=0.0)
        slot = tl.load(slot_ptr + row)
        result = target
        if slot != 0:  # slot 0 (unsteered or padding): a copy, no table reads
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
            result = (t32 + delta).to(target.dtype)
        tl.store(out_ptr + row * stride_out + offs, result, mask=mask)

    return steered_sum_kernel


def _launch(
    target: torch.Tensor,
    extra: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
) -> torch.Tensor:
    import triton

    target = target if target.stride(-1) == 1 else target.contiguous()
    if extra is not None and extra.stride(-1) != 1:
        extra = extra.contiguous()
    out = torch.empty_like(target)
    n, hidden = target.shape
    if n == 0:
        return out
    k = directions.shape[1]
    block = triton.next_power_of_2(hidden)
    kernel = _kernel()
    kernel[(n,)](  # type: ignore[index]
        target,
        extra if extra is not None else target,
        out,
        token_slot,
        token_gate,
        directions.contiguous(),
        coefficients.contiguous(),
        term_index.contiguous(),
        hidden,
        target.stride(0),
        extra.stride(0) if extra is not None else 0,
        out.stride(0),
        token_gate.stride(0),
        HAS_EXTRA=extra is not None,
        K=k,
        BLOCK=block,
        num_warps=max(1, min(16, block // 256)),
    )
    return out


@functools.cache
def _register() -> None:
    torch.library.custom_op("steerserve::steered_sum", mutates_args=(), device_types="cuda")(_launch)

    @torch.library.register_fake("steerserve::steered_sum")  # type: ignore[untyped-decorator]
    def _fake(target: torch.Tensor, *_: object) -> torch.Tensor:
        return torch.empty_like(target)
