"""An independent reference of the steering semantics on a Hugging Face transformers model.

Written from the README formulas, not from `steering.worker.ops`: each term is applied with its own formula
(add / project / clamp) through forward hooks at the site it names, gated by position exactly as documented.
Layer L = output of decoder block L; site residual = the block's output stream, mlp = the MLP branch as it
joins the stream (the MLP or MoE output; after the post-feedforward norm where there is one), attn = the
attention output (before any post-attention norm and the residual add).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RefCondition:
    direction: torch.Tensor  # the raw condition vector at `layer`
    layer: int
    threshold: float
    scope: str  # token | prompt


@dataclass(frozen=True)
class RefTerm:
    direction: dict[int, torch.Tensor]  # layer -> raw vector v
    strength: float
    layers: tuple[int, ...]
    op: str
    site: str
    positions: str  # all | prompt | generated | last_prompt | tokens
    tokens: tuple[int, ...] = ()
    schedule: tuple[tuple[int, float], ...] = ()  # (t, strength): piecewise linear in t, constant outside
    condition: RefCondition | None = None


def condition_gate(condition: RefCondition, stream: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """1.0 where the condition lets its term act, from the stream after block Lc ([n, hidden]): r̂·x > θ per
    token; or, for scope prompt, the mean of r̂·x over the prompt > θ, for the last prompt token and after."""
    proj = stream.float() @ (condition.direction / condition.direction.norm()).float()
    if condition.scope == "token":
        return (proj > condition.threshold).float()
    decided = float(proj[:prompt_len].mean() > condition.threshold)
    return (torch.arange(stream.shape[0]) >= prompt_len - 1).float() * decided


def term_strength(term: RefTerm, n: int, prompt_len: int) -> torch.Tensor:
    """The term's strength at each position p: fixed, or its schedule at t = the tokens generated before the
    output computed at p (max(0, p - prompt_len + 1))."""
    if not term.schedule:
        return torch.full((n,), float(term.strength))
    t = (torch.arange(n) - prompt_len + 1).clamp(min=0).double()
    counts = torch.tensor([float(c) for c, _ in term.schedule], dtype=torch.float64)
    values = torch.tensor([float(s) for _, s in term.schedule], dtype=torch.float64)
    strength = torch.full_like(t, float(values[0]))
    for k in range(len(counts) - 1):  # interpolate segment by segment; after the last point: its value
        inside = (t >= counts[k]) & (t <= counts[k + 1])
        slope = (values[k + 1] - values[k]) / (counts[k + 1] - counts[k])
        strength = torch.where(inside, values[k] + slope * (t - counts[k]), strength)
    strength = torch.where(t > counts[-1], values[-1], strength)
    return strength.float()


def position_gate(term: RefTerm, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """1.0 where the input token at position p is steered by this term."""
    n = ids.shape[0]
    p = torch.arange(n)
    if term.positions == "all":
        mask = torch.ones(n, dtype=torch.bool)
    elif term.positions == "prompt":
        mask = p < prompt_len
    elif term.positions == "generated":
        mask = p >= prompt_len
    elif term.positions == "last_prompt":
        mask = p == prompt_len - 1
    elif term.positions == "tokens":
        mask = torch.tensor([int(t) in term.tokens for t in ids.tolist()])
    else:
        raise ValueError(term.positions)
    return mask.to(torch.float32)


def apply_term(
    x: torch.Tensor, v: torch.Tensor, term: RefTerm, gate: torch.Tensor, prompt_len: int = 0
) -> torch.Tensor:
    r = v / v.norm()
    s = term_strength(term, x.shape[0], prompt_len).unsqueeze(-1)
    if term.op == "add":
        change = s * v.expand_as(x)
    elif term.op == "project":
        change = s * (x @ r).unsqueeze(-1) * r
    elif term.op == "clamp":
        change = (s.squeeze(-1) - x @ r).unsqueeze(-1) * r
    else:
        raise ValueError(term.op)
    return x + gate.unsqueeze(-1) * change


def mlp_branch(block: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is the block's MLP branch as it joins the residual stream: the MLP (or MoE
    block), or the norm after it where the architecture has one (Gemma's post-feedforward norm)."""
    for name in ("post_feedforward_layernorm", "post_mlp_layernorm", "mlp", "block_sparse_moe"):
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"no MLP branch in {type(block).__name__}")


def reference_logprobs(
    model: torch.nn.Module, ids: Sequence[int], prompt_len: int, terms: Sequence[RefTerm]
) -> torch.Tensor:
    """log-softmax at every position of a teacher-forced sequence, with `terms` applied."""
    input_ids = torch.tensor([list(ids)])
    flat = input_ids[0]
    layers = model.model.layers  # type: ignore[union-attr]
    handles = []
    factors: dict[int, torch.Tensor] = {}  # term -> its condition's gate, set when the forward passes block Lc
    condition_layers = {t.condition.layer for t in terms if t.condition is not None}
    held_mlp: dict[int, torch.Tensor] = {}  # a condition layer's MLP output: its mlp terms apply after the condition

    def steer(x: torch.Tensor, layer: int, site: str) -> torch.Tensor:
        for index, term in enumerate(terms):
            if term.site == site and layer in term.layers:
                gate = position_gate(term, flat, prompt_len) * factors.get(index, 1.0)
                x = apply_term(x, term.direction[layer], term, gate, prompt_len)
        return x

    def condition_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            stream = (output[0] if isinstance(output, tuple) else output)[0]
            for index, term in enumerate(terms):
                if term.condition is not None and term.condition.layer == layer:
                    factors[index] = condition_gate(term.condition, stream, prompt_len)
            if layer not in held_mlp:
                return None
            mlp = held_mlp.pop(layer)
            new = (stream + steer(mlp, layer, "mlp") - mlp).unsqueeze(0)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def hook_for(layer: int, site: str):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            tensor = output[0] if isinstance(output, tuple) else output
            if site == "mlp" and layer in condition_layers:
                held_mlp[layer] = tensor[0]
                return None
            new = steer(tensor[0], layer, site).unsqueeze(0)
            if isinstance(output, tuple):
                return (new, *output[1:])
            return new

        return hook

    for layer in sorted(condition_layers):
        handles.append(layers[layer].register_forward_hook(condition_hook(layer)))  # before the block's own terms
    used = {(layer, t.site) for t in terms for layer in t.layers}
    for layer, site in sorted(used):
        block = layers[layer]
        module = {"residual": block, "mlp": mlp_branch(block), "attn": block.self_attn}[site]
        handles.append(module.register_forward_hook(hook_for(layer, site)))
    try:
        with torch.no_grad():
            logits = model(input_ids).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    return torch.log_softmax(logits.float(), dim=-1)
