"""The bundled demo model served when no `--model` is given: its place, served name and serving defaults.

`demo/` holds the toy reasoning model's weights, tokenizer and its `steerserve/` assets (reflection vector and
presets, installed into the registry on first start). It is built by the toy's research code (`research/toy`,
outside the product packages); nothing here imports it.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).with_name("demo")
DEMO_NAME = "steerserve-demo"
DEMO_REASONING_PARSER = "deepseek_r1"  # the toy thinks in <think> ... </think>
# The toy is served, and its vector extracted, in float32: vLLM's "auto" would downcast it to bf16 on CPU, which
# is emulated (slow) on CPUs without native bf16 and rounds the toy's small activations differently per machine.
DEMO_DTYPE = "float32"
# The toy needs a few MiB of KV cache. Without a size, vLLM's CPU worker asks for 92 % of its memory node and
# refuses to start where less is free (seen on a 2-core machine whose node 0 held 9 of its 23 GiB).
DEMO_KV_CACHE_GIB = 2
