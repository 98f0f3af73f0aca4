"""The vLLM plugin: `register()` is the `vllm.general_plugins` entry point (runs in every vLLM process).

It only wraps runner hook points; the steering state is built in a worker after its model loads, and only
for engines created with a steerserve config in `additional_config` — other engines in the same environment
are left as they are.
"""

from __future__ import annotations


def register() -> None:
    from steering.vllm_plugin.runner import patch_runners

    patch_runners()
