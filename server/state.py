"""Everything steerserve's routes need, built once per API process by the endpoint plugin's `init_state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from server.auth import KeyPolicy
from server.metrics import ServerMetrics
from steering.experiments import Experiments
from steering.extract.jobs import ExtractionJobs
from steering.reflection import Reasoning
from steering.settings import SteerserveSettings
from steering.sources import SteeringSources
from steering.store.admin import Admin
from steering.store.cache import CachedRegistry


@dataclass
class ServerState:
    settings: SteerserveSettings
    engine: Any  # steering.engine.SteeringEngine (or a fake with the same surface in tests)
    registry: CachedRegistry
    sources: SteeringSources
    admin: Admin
    metrics: ServerMetrics
    keys: KeyPolicy
    served_model: str
    model_path: str
    experiments: Experiments
    jobs: ExtractionJobs
    reasoning: Reasoning

    def model_card(self, name: str, parent: str | None, description: str = "") -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "steerserve",
            "root": self.model_path,
            "parent": parent,
            "max_model_len": self.engine.max_model_len,
        }
        if description:
            card["description"] = description
        return card

    async def steered_models(self) -> list[dict[str, Any]]:
        """Presets and experiments, each a model a client may name."""
        presets = await self.registry.store.list_presets()
        cards = [self.model_card(p.name, self.served_model, p.description) for p in presets]
        cards += [
            self.model_card(e["model"], self.served_model, e.get("description", ""))
            for e in await self.experiments.list()
        ]
        return cards


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.steerserve
    return state
