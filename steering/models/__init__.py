"""The bundled demo model served when no `--model` is given: its place, served name and serving defaults.

`demo/` holds the toy reasoning model's weights, tokenizer and its `steerserve/` assets (reflection vector and
presets, installed into the registry on first start). It is built by the toy's research code (`research/toy`,
outside the product packages); nothing here imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steering.store.base import VectorStore

logger = logging.getLogger("steerserve")

DEMO_DIR = Path(__file__).with_name("demo")
DEMO_NAME = "steerserve-demo"
DEMO_REASONING_PARSER = "deepseek_r1"  # the toy thinks in <think> ... </think>
# The toy is served, and its vector extracted, in float32: vLLM's "auto" would downcast it to bf16 on CPU, which
# is emulated (slow) on CPUs without native bf16 and rounds the toy's small activations differently per machine.
DEMO_DTYPE = "float32"
# The toy needs a few MiB of KV cache. Without a size, vLLM's CPU worker asks for 92 % of its memory node and
# refuses to start where less is free (seen on a 2-core machine whose node 0 held 9 of its 23 GiB).
DEMO_KV_CACHE_GIB = 2


async def install_model_assets(store: VectorStore, model_dir: Path, fingerprint: dict[str, Any]) -> None:
    """A model directory with a `steerserve/` folder (the bundled demo) brings its vectors and presets: they
    are registered on first start."""
    from safetensors.numpy import load_file

    from steering.spec import SteeringTerm
    from steering.store.base import Preset
    from steering.vectors import VectorDefaults

    meta_path = model_dir / "steerserve" / "reflection.json"
    if not meta_path.exists():
        return
    meta = json.loads(meta_path.read_text())
    if await store.latest_version(meta["id"]) is None:
        tensors = load_file(str(model_dir / "steerserve" / "reflection.safetensors"))
        layers = {int(name.split(".")[1]): values for name, values in tensors.items()}
        defaults = VectorDefaults.model_validate(meta["defaults"])
        await store.add_vector(meta["id"], layers, defaults, meta["description"], meta["provenance"], fingerprint)
        logger.info("registered the model's %r vector", meta["id"])
    for name, body in meta["presets"].items():
        if await store.get_preset(name) is None:
            terms = [SteeringTerm.model_validate(t) for t in body["steering"]]
            await store.put_preset(Preset(name=name, steering=terms, description=body["description"]))
