"""Everything a route needs, built once per process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.admin import Admin
from server.auth import KeyPolicy
from server.experiments import Experiments
from server.metrics import ServerMetrics
from server.serving_chat import ChatServing
from server.settings import DEMO_NAME, ServerSettings
from steering.extract.jobs import ExtractionJobs
from steering.store.cache import CachedRegistry


@dataclass
class ServerState:
    settings: ServerSettings
    engine: Any  # steering.engine.SteeringEngine (or a fake with the same surface in tests)
    registry: CachedRegistry
    serving: ChatServing
    admin: Admin
    metrics: ServerMetrics
    keys: KeyPolicy
    served_model: str
    experiments: Experiments
    jobs: ExtractionJobs

    async def model_list(self) -> dict[str, Any]:
        base = {
            "id": self.served_model,
            "object": "model",
            "created": 0,
            "owned_by": "steerserve",
            "root": self.settings.model,
            "parent": None,
            "max_model_len": self.engine.max_model_len,
        }
        if self.served_model == DEMO_NAME:
            base["description"] = "toy demo reasoning model: chain arithmetic only, not a real reasoner"
        presets = await self.registry.store.list_presets()
        data = [base] + [
            {
                "id": p.name,
                "object": "model",
                "created": 0,
                "owned_by": "steerserve",
                "root": self.settings.model,
                "parent": self.served_model,
                "description": p.description,
            }
            for p in presets
        ]
        data += [
            {
                "id": e["model"],
                "object": "model",
                "created": 0,
                "owned_by": "steerserve",
                "root": self.settings.model,
                "parent": self.served_model,
                "description": e.get("description", ""),
            }
            for e in await self.experiments.list()
        ]
        return {"object": "list", "data": data}

    def sync_metrics(self) -> None:
        stats = self.registry.stats
        self.metrics.sync_cache(stats.hits, stats.misses, stats.stale, stats.errors)
