"""The auth policy over every route the server declares (read from its own OpenAPI schema), on real HTTP:
vLLM's `--api-key` guards every /v1 route, steerserve's included, and accepts the admin key too; steering
writes need the admin key; /health, /metrics, /version, /playground and the schema itself are public, as are
vLLM's routes outside /v1 (/tokenize, /detokenize: vLLM's own policy; protect them at the network edge)."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.engine
USER = {"Authorization": "Bearer user-secret"}
ADMIN = {"Authorization": "Bearer admin-secret"}
PUBLIC = ("/health", "/metrics", "/version", "/playground", "/openapi.json", "/docs")


def routes(schema: dict[str, object]) -> list[tuple[str, str]]:
    paths = schema["paths"]
    assert isinstance(paths, dict)
    found = []
    for path, operations in paths.items():
        concrete = re.sub(r"\{[^}]+\}", "auth-probe", path)
        found.extend((method.upper(), concrete) for method in operations)
    return found


def is_write(method: str, path: str) -> bool:
    return path.startswith("/v1/steering/") and method in ("POST", "PUT", "DELETE")


async def test_every_declared_route_follows_the_key_policy(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        for path in PUBLIC:
            assert (await http.get(path)).status_code == 200, path
        declared = routes((await http.get("/openapi.json")).json())
        protected = [(m, p) for m, p in declared if p.startswith("/v1/")]
        assert len(protected) >= 20  # completions, chat, models, vectors, presets, experiments, jobs, ...
        for method, path in protected:
            anonymous = await http.request(method, path, json={})
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            wrong = await http.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, (method, path)
            if is_write(method, path):
                user = await http.request(method, path, json={}, headers=USER)
                assert user.status_code == 403, (method, path, user.text)
                admin = await http.request(method, path, json={}, headers=ADMIN)
                assert admin.status_code not in (401, 403), (method, path)
            else:
                user = await http.request(method, path, json={}, headers=USER)
                assert user.status_code not in (401, 403), (method, path, user.text)
