"""Run one extraction on the served engine: make or read the contrast, capture rows, scan layers, build vectors.

Traces are turned into token ids once (prompt through the chat template, completion appended); positions are
found on the per-token text, and only the wanted rows are captured (never whole traces), so memory stays
bounded by `max_positions` rows per class and layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steering.extract.methods import LayerScan, condition_threshold, direction, recommend_layer, scan_layer
from steering.extract.positions import trace_positions
from steering.extract.request import ExtractionRequest
from steering.vectors import ConditionDefaults, ConditionScope

Progress = Callable[[str, float], Awaitable[None]]
CONCURRENCY = 8


@dataclass
class Trace:
    ids: list[int]
    start: int  # first completion token


@dataclass
class ExtractionOutcome:
    directions: dict[int, np.ndarray]  # every layer
    scan: list[LayerScan]
    recommended_layer: int
    counts: dict[str, int]
    data_sha256: str
    mean_norms: dict[int, float] = field(default_factory=dict)
    thresholds: dict[int, tuple[float, float]] = field(default_factory=dict)  # layer -> (θ, balanced accuracy)

    def condition_defaults(self, request: ExtractionRequest, stored_layers: Sequence[int]) -> ConditionDefaults:
        """The stored vector's condition defaults: θ per stored layer; scope `prompt` when a row is a whole text's
        mean (what a prompt-scoped condition averages), else `token`."""
        scope: ConditionScope = "prompt" if request.contrast == "texts" and request.text_pool == "mean" else "token"
        return ConditionDefaults(thresholds={k: self.thresholds[k][0] for k in stored_layers}, scope=scope)

    def provenance(self, request: ExtractionRequest, stored_layers: Sequence[int]) -> dict[str, Any]:
        return {
            "method": request.method,
            "site": request.site,
            "contrast": request.contrast,
            "data_sha256": self.data_sha256,
            "counts": self.counts,
            "layers": list(stored_layers),
            "recommended_layer": self.recommended_layer,
            "scan": [s.to_json() for s in self.scan],
            "mean_norm": {str(k): round(v, 6) for k, v in self.mean_norms.items()},
            "condition": {
                str(k): {"threshold": round(t, 6), "balanced_accuracy": round(a, 6)}
                for k, (t, a) in self.thresholds.items()
                if k in stored_layers
            },
            "positions": {"horizon": request.horizon, "delimiter": "\\n\\n"},
            "seed": request.seed,
        }


async def _noop(stage: str, fraction: float) -> None:
    return None


def token_texts(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Text and per-token character offsets from decoding one token at a time (ASCII keywords survive)."""
    pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    offsets, cursor = [], 0
    for piece in pieces:
        offsets.append((cursor, cursor + len(piece)))
        cursor += len(piece)
    return "".join(pieces), offsets


def _prompt_ids(engine: Any, prompt: str, raw: bool) -> list[int]:
    if raw:
        return [int(t) for t in engine.tokenizer.encode(prompt, add_special_tokens=False)]
    return [int(t) for t in engine.render_chat([{"role": "user", "content": prompt}])]


async def _generate_traces(engine: Any, request: ExtractionRequest, progress: Progress) -> list[Trace]:
    assert request.problems is not None
    jobs = [(p, k) for p in request.problems for k in range(request.samples_per_problem)]
    gate = asyncio.Semaphore(4 * CONCURRENCY)
    done = 0

    async def one(problem: str, k: int) -> Trace:
        nonlocal done
        prompt = _prompt_ids(engine, problem, request.raw)
        params = engine.sampling_params(
            max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed * 1000 + k
        )
        async with gate:
            final = None
            async for output in engine.generate(prompt, params, f"extract-gen-{uuid.uuid4().hex}"):
                final = output
        done += 1
        if done % 32 == 0:
            await progress("generating traces", done / len(jobs))
        assert final is not None
        return Trace(prompt + [int(t) for t in final.outputs[0].token_ids], len(prompt))

    return list(await asyncio.gather(*(one(p, k) for p, k in jobs)))


async def _trace_rows(
    engine: Any, traces: list[Trace], request: ExtractionRequest, layers: list[int], progress: Progress
) -> tuple[dict[int, list[np.ndarray]], dict[int, list[np.ndarray]], dict[str, int]]:
    capacity = engine.activations.budget.capacity
    plans: list[tuple[Trace, list[int], list[int]]] = []
    for trace in traces:
        text, offsets = token_texts(engine.tokenizer, trace.ids)
        found = trace_positions(text, offsets, start=trace.start, horizon=request.horizon)
        plans.append((trace, found.reflective, found.non_reflective))
    rng = np.random.default_rng(request.seed)
    pos_total = sum(len(p[1]) for p in plans)
    neg_total = sum(len(p[2]) for p in plans)
    keep_pos = min(1.0, request.max_positions / max(1, pos_total))
    keep_neg = min(1.0, request.max_positions / max(1, neg_total))
    positive: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    negative: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(trace: Trace, pos: list[int], neg: list[int]) -> None:
        nonlocal done
        pos = [p for p in pos if rng.random() < keep_pos]
        neg = [p for p in neg if rng.random() < keep_neg]
        wanted = sorted(set(pos + neg))[:capacity]
        if wanted and len(trace.ids) < engine.activations.max_model_len:
            async with gate:
                got = await engine.capture(trace.ids, layers, positions=wanted, site=request.site)
            row_of = {p: i for i, p in enumerate(got.positions)}
            for layer in layers:
                matrix = got.layers[layer]
                positive[layer].extend(matrix[row_of[p]] for p in pos if p in row_of)
                negative[layer].extend(matrix[row_of[p]] for p in neg if p in row_of)
        done += 1
        if done % 32 == 0:
            await progress("capturing activations", done / len(plans))

    await asyncio.gather(*(one(*plan) for plan in plans))
    counts = {
        "traces": len(traces),
        "reflective_found": pos_total,
        "non_reflective_found": neg_total,
        "reflective_used": len(positive[layers[0]]),
        "non_reflective_used": len(negative[layers[0]]),
    }
    return positive, negative, counts


async def _text_rows(
    engine: Any, request: ExtractionRequest, layers: list[int]
) -> tuple[dict[int, list[np.ndarray]], dict[int, list[np.ndarray]], dict[str, int]]:
    assert request.positive is not None and request.negative is not None
    gate = asyncio.Semaphore(CONCURRENCY)

    async def rows(text: str) -> dict[int, np.ndarray]:
        ids = _prompt_ids(engine, text, True)
        async with gate:
            if request.text_pool == "mean":
                got = await engine.capture(ids, layers, pool="mean", site=request.site)
                pooled: dict[int, np.ndarray] = got.layers
                return pooled
            got = await engine.capture(ids, layers, positions=[len(ids) - 1], site=request.site)
            return {layer: got.layers[layer][0] for layer in layers}

    pos_rows = await asyncio.gather(*(rows(t) for t in request.positive))
    neg_rows = await asyncio.gather(*(rows(t) for t in request.negative))
    positive = {layer: [r[layer] for r in pos_rows] for layer in layers}
    negative = {layer: [r[layer] for r in neg_rows] for layer in layers}
    return positive, negative, {"positive_texts": len(pos_rows), "negative_texts": len(neg_rows)}


def data_hash(request: ExtractionRequest, traces: list[Trace]) -> str:
    digest = hashlib.sha256()
    if request.contrast == "texts":
        digest.update(json.dumps([request.positive, request.negative, request.text_pool]).encode())
    else:
        for trace in traces:
            digest.update(json.dumps([trace.start, trace.ids]).encode())
    return digest.hexdigest()


async def run_extraction(engine: Any, request: ExtractionRequest, progress: Progress = _noop) -> ExtractionOutcome:
    """Everything but storing: the directions for every layer and the scan that recommends one."""
    layers = list(range(engine.shape.num_layers))
    traces: list[Trace] = []
    if request.contrast == "texts":
        positive, negative, counts = await _text_rows(engine, request, layers)
    else:
        if request.contrast == "problems":
            traces = await _generate_traces(engine, request, progress)
        else:
            assert request.traces is not None
            for item in request.traces:
                prompt = _prompt_ids(engine, item.prompt, request.raw)
                completion = engine.tokenizer.encode(item.completion, add_special_tokens=False)
                traces.append(Trace(prompt + [int(t) for t in completion], len(prompt)))
        positive, negative, counts = await _trace_rows(engine, traces, request, layers, progress)
    if min(len(positive[layers[0]]), len(negative[layers[0]])) < 2:
        raise ValueError(
            f"too few positions to contrast ({counts}): need at least 2 of each class; "
            "traces need reflection keywords and '\\n\\n'-delimited steps"
        )
    await progress("scanning layers", 0.95)
    scans, directions, norms, thresholds = [], {}, {}, {}
    for layer in layers:
        pos = np.stack(positive[layer]).astype(np.float64)
        neg = np.stack(negative[layer]).astype(np.float64)
        scan = await asyncio.to_thread(scan_layer, layer, pos, neg, request.seed)
        scans.append(scan)
        directions[layer] = direction(request.method, pos, neg, request.seed).astype(np.float32)
        norms[layer] = scan.mean_norm
        thresholds[layer] = condition_threshold(pos, neg, directions[layer].astype(np.float64))
    recommended = recommend_layer(scans)
    return ExtractionOutcome(directions, scans, recommended, counts, data_hash(request, traces), norms, thresholds)
