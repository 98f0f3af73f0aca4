"""Worker-side RPC methods, mixed into vLLM's `WorkerBase` by the plugin's `register()`.

The API process calls them on every rank with `collective_rpc("steerserve_...")`, the way LoRA's `add_lora`
travels. Mixing them into the base class (rather than asking for `--worker-extension-cls`) means plain
`vllm serve` with the plugin allow-listed gets them too, on CPU and GPU workers alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steering.worker.runner import state_of
from steering.worker.tables import SteeringState


class SteeringWorkerMethods:
    """`self.model_runner` is the runner whose state the plugin built."""

    model_runner: Any

    def _steering_state(self) -> SteeringState:
        state = state_of(self.model_runner)
        if state is None:
            raise RuntimeError("steerserve plugin is not active in this worker")
        return state

    def steerserve_drop_vectors(self, hashes: Sequence[str]) -> int:
        return self._steering_state().drop_vectors(hashes)

    def steerserve_pop_captures(self, capture_ids: Sequence[str]) -> dict[str, Any]:
        """Hand back (and forget) finished activation captures."""
        capture = self._steering_state().capture
        return capture.pop(capture_ids) if capture is not None else {}

    def steerserve_failures(self, tickets: Sequence[str]) -> dict[str, str]:
        """Why each of these requests could not be steered (and forget it); requests steered fine are absent."""
        return self._steering_state().pop_failures(tickets)

    def steerserve_stats(self) -> dict[str, Any]:
        stats = self._steering_state().stats()
        stats["runner"] = f"{type(self.model_runner).__module__}.{type(self.model_runner).__name__}"
        return stats


def install_worker_methods() -> None:
    """Idempotent: add the `steerserve_*` methods to vLLM's worker base class."""
    from vllm.v1.worker.worker_base import WorkerBase

    for name, method in vars(SteeringWorkerMethods).items():
        if name.startswith(("steerserve_", "_steering_state")) and not hasattr(WorkerBase, name):
            setattr(WorkerBase, name, method)
