"""Helpers for tests that drive a real SteeringEngine."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from steering.spec import SteeringTerm
from steering.vectors import SteeringVector

_ids = itertools.count()


@dataclass
class Result:
    token_ids: list[int]
    logprobs: torch.Tensor | None  # [prompt_len - 1 + generated, vocab], row p = distribution after position p
    num_cached_tokens: int
    finish_reason: str | None


def forcing_direction(model: Path, token: int) -> dict[int, np.ndarray]:
    """{last layer: the model's unembedding row of `token`, x200}: added there, it makes the model emit `token`."""
    from safetensors.numpy import load_file

    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    unembed = load_file(str(model / "model.safetensors"))["lm_head.weight"]
    return {layers - 1: np.asarray(unembed[token] * 200.0, dtype=np.float32)}


def random_vector(vector_id: str, layers: Sequence[int], hidden: int, scale: float, seed: int) -> SteeringVector:
    rng = np.random.default_rng(seed)
    return SteeringVector(
        vector_id, {layer: (rng.standard_normal(hidden) * scale).astype(np.float32) for layer in layers}
    )


def lookup_in(vectors: Mapping[str, SteeringVector]) -> Any:
    def lookup(vector_id: str, version: int | None) -> SteeringVector:
        vector = vectors[vector_id]
        if version is not None and version != vector.version:
            raise KeyError(vector_id)
        return vector

    return lookup


async def run(
    engine: Any,
    prompt: Sequence[int],
    terms: Sequence[SteeringTerm] | None = None,
    vectors: Mapping[str, SteeringVector] | None = None,
    max_tokens: int = 8,
    full_logprobs: bool = False,
    cache_salt: str | None = None,
    ignore_eos: bool = True,
    lora_request: Any = None,
) -> Result:
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        ignore_eos=ignore_eos,
        logprobs=-1 if full_logprobs else None,
        prompt_logprobs=-1 if full_logprobs else None,
    )
    spec = engine.resolve(terms, lookup_in(vectors or {})) if terms else None
    final = None
    request_id = f"test-{next(_ids)}"
    async for output in engine.generate(list(prompt), params, request_id, spec, cache_salt, lora_request):
        final = output
    assert final is not None
    completion = final.outputs[0]
    matrix = None
    if full_logprobs:
        vocab = engine.shape.vocab_size
        rows = [d for d in final.prompt_logprobs[1:]] + list(completion.logprobs)
        matrix = torch.full((len(rows), vocab), float("-inf"))
        for i, row in enumerate(rows):
            ids = torch.tensor(list(row.keys()))
            matrix[i, ids] = torch.tensor([lp.logprob for lp in row.values()])
    return Result(list(completion.token_ids), matrix, int(final.num_cached_tokens or 0), completion.finish_reason)


async def extracted(
    http: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None, every: float = 0.2
) -> dict[str, Any]:
    """Start an extraction job over HTTP (202), poll it (600 times, `every` seconds apart) until it ends, and
    return its result; it must have succeeded."""
    created = await http.post("/v1/steering/vectors/extract", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job = created.json()
    for _ in range(600):
        job = (await http.get(f"/v1/steering/jobs/{job['id']}", headers=headers)).json()
        if job["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(every)
    assert job["status"] == "succeeded", job
    result: dict[str, Any] = job["result"]
    return result
