"""Finish the toy demo model after training: extract its reflection vector from its own traces with the
extraction pipeline (problems of the 'extract' split, never the A/B 'eval' split), and write the vector and
the presets that `steerserve serve` installs on first start.

    python -m research.toy.package --model-dir steering/models/demo
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from research.toy.arith import problems
from research.toy.train import DEMO_TEMPERATURE
from steering.models import DEMO_DTYPE, DEMO_KV_CACHE_GIB

VECTOR_ID = "reflection"
ASSETS = "steerserve"  # subdirectory of the model dir with the vector and presets
# Operator, positions and strengths chosen by pilots on "extract"-split problems (never the A/B "eval" split):
# adding the direction only where the input token is a step delimiter ("\n\n", where the model decides whether
# to write "Wait") steers both ways without touching the arithmetic. On 1,000 extract-split problems at the toy's
# temperature, -0.5 cut reflection from 0.549 to 0.224 and tokens by 30 % for 1.6 points of accuracy, and +0.5
# raised reflection to 0.917 and accuracy by 4.1 points; +-0.25 moved reflection less than the A/B's targets ask
# (0.64x and 1.43x; `research/results/demo_behaviour.md`).
OP, SITE = "add", "mlp"
GATE = {"tokens": ["\n\n"]}
PRESETS: dict[str, dict[str, Any]] = {
    "reflect-up": {"strength": 0.5, "description": "toy demo: reflect more (+0.5 at step delimiters)"},
    "reflect-down": {"strength": -0.5, "description": "toy demo: reflect less (-0.5 at step delimiters)"},
}


async def _extract(model_dir: Path, count: int, seed: int, layers: list[int] | None) -> dict[str, Any]:
    from steering.config import EngineSteeringConfig
    from steering.engine import EngineSettings, SteeringEngine
    from steering.extract.pipeline import run_extraction
    from steering.extract.request import ExtractionRequest

    engine = SteeringEngine.create(
        EngineSettings(
            model=str(model_dir),
            dtype=DEMO_DTYPE,
            enforce_eager=True,
            steering=EngineSteeringConfig(),
            seed=seed,
            kv_cache_memory_bytes=DEMO_KV_CACHE_GIB * 2**30,
        )
    )
    try:
        request = ExtractionRequest(
            id=VECTOR_ID,
            method="diffmean",
            site="mlp",  # read where the presets act: the MLP output (the paper's site)
            layers=layers,
            problems=[p.text for p in problems(seed, count, "extract")],
            temperature=DEMO_TEMPERATURE,  # the toy's sampling default: extract from traces like those it serves
            max_tokens=384,
            seed=seed,
            description="toy demo: self-reflection direction (difference of means, the model's own traces)",
        )
        outcome = await run_extraction(engine, request)
        chosen = sorted({x % engine.shape.num_layers for x in layers or [outcome.recommended_layer]})
        return {
            "layers": {layer: outcome.directions[layer].tolist() for layer in chosen},
            "provenance": outcome.provenance(request, chosen),
        }
    finally:
        engine.shutdown()


def preset_entries() -> dict[str, Any]:
    """The presets as `steerserve serve` installs them: the vector at the preset's strength, gated to `GATE`."""
    return {
        name: {
            "steering": [{"vector": VECTOR_ID, "strength": p["strength"], "positions": GATE}],
            "description": p["description"],
        }
        for name, p in PRESETS.items()
    }


def package(model_dir: Path, count: int = 600, seed: int = 0, layers: list[int] | None = None) -> dict[str, Any]:
    import numpy as np
    from safetensors.numpy import save_file

    result = asyncio.run(_extract(model_dir, count, seed, layers))
    tensors = {f"layer.{k}": np.asarray(v, dtype=np.float32) for k, v in result["layers"].items()}
    assets = model_dir / ASSETS
    assets.mkdir(exist_ok=True)  # not beside the weights: vLLM loads every *.safetensors of the model dir
    save_file(tensors, str(assets / "reflection.safetensors"))
    chosen = sorted(int(k) for k in result["layers"])
    meta = {
        "id": VECTOR_ID,
        "description": "toy demo: self-reflection direction extracted from the demo model's own traces",
        "defaults": {"op": OP, "site": SITE, "positions": "all", "strength": 1.0, "layers": chosen},
        "provenance": result["provenance"],
        "presets": preset_entries(),
    }
    (assets / "reflection.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


PROBLEM_SETS = {"eval": (2026, 2000), "extract": (0, 1000)}  # split -> (seed, count)


def problem_rows(split: str) -> list[dict[str, str]]:
    """The demo's problem set of one split as the A/B runner and the CLI read it (`clients/data/demo_<split>.jsonl`)."""
    seed, count = PROBLEM_SETS[split]
    return [
        {"id": f"demo-{i}", "prompt": p.text, "answer": str(p.answer)}
        for i, p in enumerate(problems(seed, count, split))
    ]


def write_problems(data_dir: Path) -> None:
    for split in PROBLEM_SETS:
        rows = "".join(json.dumps(row) + "\n" for row in problem_rows(split))
        (data_dir / f"demo_{split}.jsonl").write_text(rows)


def main(
    model_dir: Annotated[Path, typer.Option(help="The trained demo model directory.")],
    count: Annotated[int, typer.Option(help="Problems of the extraction split to generate traces for.")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of problems and sampling.")] = 0,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default: the recommended one).")] = None,
    write_problems_to: Annotated[
        Path | None, typer.Option(help="Only write the problem sets here (clients/data).")
    ] = None,
) -> None:
    """Extract and write the demo's reflection vector and presets (or, with --write-problems-to, its problem sets)."""
    if write_problems_to is not None:
        write_problems(write_problems_to)
        return
    chosen = [int(x) for x in layers.split(",")] if layers else None
    meta = package(model_dir, count, seed, chosen)
    print(json.dumps({"layers": meta["defaults"]["layers"], "counts": meta["provenance"]["counts"]}))
    for row in meta["provenance"]["scan"]:
        print(json.dumps(row))


if __name__ == "__main__":
    typer.run(main)
