"""The vLLM general plugin: `register()` is the `vllm.general_plugins` entry point (runs in every vLLM process).

It wraps runner hook points and adds the worker RPC methods; the steering state is built in a worker after its
model loads, and only for engines that asked for steering (a steerserve config in `additional_config`, or
`VLLM_PLUGINS` naming this plugin) — other engines in the same environment are left as they are.
"""

from __future__ import annotations


def register() -> None:
    from steering.config import named_in_vllm_plugins, prefer_v1_runner
    from steering.worker.rpc import install_worker_methods
    from steering.worker.runner import patch_runners

    patch_runners()
    install_worker_methods()
    if named_in_vllm_plugins():  # allow-listed by name: this environment's engines steer (plain `vllm serve`)
        prefer_v1_runner()
