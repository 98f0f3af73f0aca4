"""Routes on a fake engine and the embedded store: shapes, steering sources, errors, auth, admin API."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load

from server.app import create_app
from server.settings import ServerSettings
from steering.store.base import StoreUnavailableError
from steering.store.embedded import EmbeddedStore
from tests.server.fake_engine import FakeEngine

MODEL = "base"


def b64(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def upload(vector_id: str = "r", layers: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": vector_id, "layers": layers or {"1": b64(np.arange(1, 9)), "-1": b64(np.ones(8))}, **extra}


async def make_client(tmp_path: Path, **settings: Any) -> tuple[httpx.AsyncClient, FakeEngine, Any]:
    engine = FakeEngine()
    store = EmbeddedStore(tmp_path / "reg.sqlite3", MODEL)
    app = create_app(ServerSettings(model="m", data_dir=tmp_path, **settings), engine, store, MODEL)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, engine, app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngine]]:
    c, engine, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        yield c, engine
    await c.aclose()


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


async def test_completion_steered_and_unsteered(client: Any) -> None:
    c, engine = client
    assert (await c.post("/v1/steering/vectors", json=upload())).status_code == 201
    plain = await c.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3}, headers={"X-Request-Id": "abc-1"}
    )
    assert plain.status_code == 200 and plain.headers["x-request-id"] == "abc-1"
    body = plain.json()
    assert body["choices"][0]["text"] == "aaa" and body["steering"]["config_hash"] is None
    assert body["steering"]["reflection"]["markers"] == 0
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert plain.headers["x-steering-config"] == "none"
    steered = await c.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "steering": [{"vector": "r", "strength": 2}]},
    )
    data = steered.json()
    assert data["steering"]["terms"][0] == {
        "vector": "r",
        "version": 1,
        "strength": 2.0,
        "layers": [1, 3],
        "op": "add",
        "site": "residual",
        "positions": "all",
    }
    assert steered.headers["x-steering-config"] == data["steering"]["config_hash"]
    assert engine.seen[-1][2] == data["steering"]["config_hash"]


async def test_presets_as_models_header_and_composition(client: Any) -> None:
    c, engine = client
    await c.post("/v1/steering/vectors", json=upload())
    await c.post("/v1/steering/vectors", json=upload("s"))
    put = await c.put("/v1/steering/presets/up", json={"steering": [{"vector": "r", "strength": 0.5}]})
    assert put.status_code == 200
    models = (await c.get("/v1/models")).json()["data"]
    assert [m["id"] for m in models] == [MODEL, "up"] and models[1]["parent"] == MODEL
    by_model = (
        await c.post(
            "/v1/chat/completions",
            json={"model": "up", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        )
    ).json()
    assert by_model["steering"]["preset"] == "up" and by_model["object"] == "chat.completion"
    by_name = (await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "steering": "up"})).json()
    assert by_name["steering"]["config_hash"] == by_model["steering"]["config_hash"]
    composed = (
        await c.post(
            "/v1/completions", json={"model": "up", "prompt": "x", "steering": [{"vector": "s", "strength": 1}]}
        )
    ).json()
    assert [t["vector"] for t in composed["steering"]["terms"]] == ["r", "s"]
    header = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers={"X-Steering": "r:0.5"})
    assert header.json()["steering"]["config_hash"] == by_model["steering"]["config_hash"]
    both = await c.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "steering": "up"}, headers={"X-Steering": "r:1"}
    )
    assert_error(both, 400, "steering")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL, "prompt": "x", "steering": [{"vector": "nope"}]}, 404, "steering"),
        ({"model": MODEL, "prompt": "x", "steering": [{"vector": "r", "layers": [9]}]}, 400, "steering[0].layers"),
        ({"model": MODEL, "prompt": "x", "steering": [{"vector": "r", "strength": 1e9}]}, 400, "steering[0].strength"),
        ({"model": MODEL, "prompt": "x", "steering": "no-such-preset"}, 400, "steering"),
        ({"model": MODEL, "prompt": "x", "steer": [{"vector": "r"}]}, 400, "steer"),
        ({"model": MODEL, "prompt": "x", "tools": [{"type": "function"}]}, 400, "tools"),
        ({"model": "other", "prompt": "x"}, 404, "model"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 1000}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "temperature": 5}, 400, "temperature"),
        ({"model": MODEL}, 400, "prompt"),
        ({"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ],
)
async def test_bad_requests_get_openai_errors(client: Any, body: dict[str, Any], status: int, param: str) -> None:
    c, engine = client
    await c.post("/v1/steering/vectors", json=upload())
    before = len(engine.seen)
    assert_error(await c.post("/v1/completions", json=body), status, param)
    assert len(engine.seen) == before, "the engine saw a request that should have been refused"


async def test_malformed_json_and_non_finite_numbers_are_400(client: Any) -> None:
    c, _ = client
    await c.post("/v1/steering/vectors", json=upload())
    bad = await c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad, 400)
    nan = await c.post(
        "/v1/completions",
        headers={"content-type": "application/json"},
        content=b'{"model": "base", "prompt": "x", "steering": [{"vector": "r", "strength": NaN}]}',
    )
    assert_error(nan, 400)
    unknown_route = await c.get("/v1/nothing")
    assert_error(unknown_route, 404)


async def test_ignores_unknown_non_steering_fields(client: Any) -> None:
    c, _ = client
    ok = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "some_future_field": 1})
    assert ok.status_code == 200


async def test_streaming_sse_with_usage(client: Any) -> None:
    c, _ = client
    response = await c.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == "aaa"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_vector_registry_versions_data_and_delete(client: Any) -> None:
    c, _ = client
    first = (await c.post("/v1/steering/vectors", json=upload(defaults={"op": "project", "strength": 0.3}))).json()
    assert first["version"] == 1 and first["hidden_size"] == 8 and first["layers"] == [1, 3]
    second = (await c.post("/v1/steering/vectors", json=upload(layers={"2": b64(np.ones(8))}))).json()
    assert second["version"] == 2 and second["sha256"] != first["sha256"]
    info = (await c.get("/v1/steering/vectors/r")).json()
    assert info["version"] == 2 and [v["version"] for v in info["versions"]] == [1, 2]
    assert info["versions"][0]["defaults"]["op"] == "project"
    data = await c.get("/v1/steering/vectors/r/data", params={"version": 1})
    tensors = load(data.content)
    assert np.array_equal(tensors["layer.1"], np.arange(1, 9, dtype=np.float32))
    used = (await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "steering": [{"vector": "r"}]})).json()
    assert used["steering"]["terms"][0]["version"] == 2 and used["steering"]["terms"][0]["layers"] == [2]
    pinned = (
        await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "steering": [{"vector": "r@1"}]})
    ).json()
    assert pinned["steering"]["terms"][0]["op"] == "project"
    await c.put("/v1/steering/presets/p", json={"steering": [{"vector": "r"}]})
    assert_error(await c.delete("/v1/steering/vectors/r"), 409)
    assert (await c.delete("/v1/steering/presets/p")).status_code == 200
    assert (await c.delete("/v1/steering/vectors/r")).status_code == 200
    assert_error(await c.get("/v1/steering/vectors/r"), 404)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (upload(layers={"1": b64(np.ones(7))}), "layers.1"),
        (upload(layers={"1": "%%%"}), "layers.1"),
        (upload(layers={"1": b64([np.nan] + [1.0] * 7)}), "layers.1"),
        (upload(layers={"9": b64(np.ones(8))}), "layers.9"),
        (upload(layers={"x": b64(np.ones(8))}), "layers.x"),
        (upload(layers={"1": b64(np.zeros(8))}), "layers.1"),
        (upload("../etc"), "id"),
        (upload("a:b"), "id"),
    ],
)
async def test_bad_vectors_store_nothing(client: Any, body: dict[str, Any], param: str) -> None:
    c, _ = client
    assert_error(await c.post("/v1/steering/vectors", json=body), 400, param)
    assert (await c.get("/v1/steering/vectors")).json()["data"] == []


async def test_bad_presets_are_refused(client: Any) -> None:
    c, _ = client
    assert_error(await c.put("/v1/steering/presets/p", json={"steering": [{"vector": "missing"}]}), 404)
    assert_error(await c.put("/v1/steering/presets/p", json={"steering": []}), 400)
    assert_error(await c.put(f"/v1/steering/presets/{MODEL}", json={"steering": [{"vector": "x"}]}), 400)
    assert (await c.get("/v1/steering/presets")).json()["data"] == []


async def test_auth_api_and_admin_keys(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path, api_key="user-key", admin_key="admin-key")
    async with app.router.lifespan_context(app):
        assert_error(await c.get("/v1/models"), 401)
        assert_error(await c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        user = {"Authorization": "Bearer user-key"}
        admin = {"Authorization": "Bearer admin-key"}
        assert (await c.get("/v1/models", headers=user)).status_code == 200
        assert (await c.get("/v1/models", headers=admin)).status_code == 200
        assert_error(await c.post("/v1/steering/vectors", json=upload(), headers=user), 403)
        assert (await c.post("/v1/steering/vectors", json=upload(), headers=admin)).status_code == 201
        assert_error(await c.post("/tokenize", json={"prompt": "x"}), 401)
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
    await c.aclose()


async def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    c, engine, app = await make_client(tmp_path, max_queued_requests=0)
    async with app.router.lifespan_context(app):
        response = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert_error(response, 503)
        assert response.headers["retry-after"] == "1"
        assert engine.seen == []
    await c.aclose()


async def test_tokenize_detokenize_version_health(client: Any) -> None:
    c, engine = client
    tok = (await c.post("/tokenize", json={"prompt": "ab"})).json()
    assert tok["tokens"] == [97, 98] and tok["count"] == 2
    assert (await c.post("/detokenize", json={"tokens": [97, 98]})).json() == {"prompt": "ab"}
    assert_error(await c.post("/detokenize", json={"tokens": [999]}), 400, "tokens")
    assert (await c.get("/version")).json()["vllm"] == "fake"
    engine.healthy = False
    assert (await c.get("/health")).status_code == 503


async def test_cors_is_off_by_default_and_configurable(tmp_path: Path) -> None:
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    closed, _, app = await make_client(tmp_path / "a")
    async with app.router.lifespan_context(app):
        response = await closed.options("/v1/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    await closed.aclose()
    opened, _, app = await make_client(tmp_path / "b", cors_origins=["http://ui.example"])
    async with app.router.lifespan_context(app):
        response = await opened.options("/v1/completions", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "http://ui.example"
    await opened.aclose()


class FailingStore(EmbeddedStore):
    """An embedded store whose reads fail as a Redis outage would."""

    failing = False

    async def latest_version(self, vector_id: str) -> int | None:
        if self.failing:
            raise StoreUnavailableError("connection refused")
        return await super().latest_version(vector_id)

    async def get_vector(self, vector_id: str, version: int | None = None) -> Any:
        if self.failing:
            raise StoreUnavailableError("connection refused")
        return await super().get_vector(vector_id, version)


async def test_registry_outage_serves_cached_and_503s_uncached(tmp_path: Path) -> None:
    engine = FakeEngine()
    store = FailingStore(tmp_path / "reg.sqlite3", MODEL)
    app = create_app(ServerSettings(model="m", data_dir=tmp_path), engine, store, MODEL)
    async with app.router.lifespan_context(app):
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        await c.post("/v1/steering/vectors", json=upload("cached"))
        await c.post("/v1/steering/vectors", json=upload("cold"))
        body = {"model": MODEL, "prompt": "x", "steering": [{"vector": "cached@1"}]}
        assert (await c.post("/v1/completions", json=body)).status_code == 200  # now in the cache
        store.failing = True
        assert (await c.post("/v1/completions", json=body)).status_code == 200
        cold = await c.post("/v1/completions", json={**body, "steering": [{"vector": "cold"}]})
        error = assert_error(cold, 503)
        assert error["code"] == "registry_unavailable" and cold.headers["retry-after"] == "1"
        assert (await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).status_code == 200
        await c.aclose()
