"""steerserve's routes on a stand-in of vLLM's app and the embedded store: steering sources, what reaches vLLM's
handler, errors, auth, the admin API."""

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

from steering.errors import StoreUnavailableError
from steering.store.embedded import EmbeddedStore
from tests.server.fake_engine import FakeEngine
from tests.server.fake_vllm import MODEL, make_client


def b64(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def upload(vector_id: str = "r", layers: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": vector_id, "layers": layers or {"1": b64(np.arange(1, 9)), "-1": b64(np.ones(8))}, **extra}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngine]]:
    c, engine, _ = await make_client(tmp_path)
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
    plain = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3})
    assert plain.status_code == 200
    body = plain.json()
    assert body["choices"][0]["text"] == "aaa" and body["steering"]["config_hash"] is None
    assert body["steering"]["reflection"]["markers"] == 0
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert plain.headers["x-steering-config"] == "none"
    assert engine.seen[-1] == (MODEL, {}, None)  # unsteered: vLLM's request untouched
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
    config = data["steering"]["config_hash"]
    assert steered.headers["x-steering-config"] == config
    model, xargs, salt = engine.seen[-1]
    assert json.loads(xargs["steerserve"])["hash"] == config and salt == f"steer:{config}"
    assert data["choices"][0]["text"] == config[0] * 3 and engine.held == [config]


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
    assert by_model["model"] == "up" and engine.seen[-1][0] == MODEL  # vLLM serves the base model
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
        ({"model": MODEL, "prompt": "x", "steering": {"vector": "r"}}, 400, "steering"),
        ({"model": MODEL, "prompt": "x", "experiment": 3}, 400, "experiment"),
        ({"model": MODEL, "prompt": "x", "experiment": "nope"}, 404, None),
        ({"model": "other", "prompt": "x"}, 404, "model"),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: Any, body: dict[str, Any], status: int, param: str | None
) -> None:
    c, engine = client
    await c.post("/v1/steering/vectors", json=upload())
    before = len(engine.seen)
    assert_error(await c.post("/v1/completions", json=body), status, param)
    assert len(engine.seen) == before, "the engine saw a request that should have been refused"


async def test_non_finite_strength_is_400(client: Any) -> None:
    c, engine = client
    await c.post("/v1/steering/vectors", json=upload())
    nan = await c.post(
        "/v1/completions",
        headers={"content-type": "application/json"},
        content=b'{"model": "base", "prompt": "x", "steering": [{"vector": "r", "strength": NaN}]}',
    )
    assert_error(nan, 400)
    assert engine.seen == []


async def test_streaming_carries_steering_on_its_last_chunk(client: Any) -> None:
    c, engine = client
    await c.post("/v1/steering/vectors", json=upload())
    response = await c.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
            "steering": [{"vector": "r"}],
        },
    )
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    config = chunks[-1]["steering"]["config_hash"]
    assert response.headers["x-steering-config"] == config and chunks[-1]["choices"] == []
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == config[0] * 3
    assert engine.admission.active_configs == 0  # released when the stream ended


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
    c, _, _ = await make_client(tmp_path, api_key="user-key", admin_key="admin-key")
    user = {"Authorization": "Bearer user-key"}
    admin = {"Authorization": "Bearer admin-key"}
    assert_error(await c.get("/v1/steering/vectors"), 401)
    assert_error(await c.get("/v1/steering/vectors", headers={"Authorization": "Bearer wrong"}), 401)
    assert (await c.get("/v1/models", headers=user)).status_code == 200
    assert (await c.get("/v1/steering/vectors", headers=admin)).status_code == 200
    assert_error(await c.post("/v1/steering/vectors", json=upload(), headers=user), 403)
    assert (await c.post("/v1/steering/vectors", json=upload(), headers=admin)).status_code == 201
    await c.aclose()


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
    store = FailingStore(tmp_path / "reg.sqlite3", MODEL)
    c, _, _ = await make_client(tmp_path, store=store)
    if True:
        await c.post("/v1/steering/vectors", json=upload("cached"))
        await c.post("/v1/steering/vectors", json=upload("cold"))
        body = {"model": MODEL, "prompt": "x", "steering": [{"vector": "cached@1"}]}
        assert (await c.post("/v1/completions", json=body)).status_code == 200  # now in the cache
        store.failing = True
        assert (await c.post("/v1/completions", json=body)).status_code == 200
        cold = await c.post("/v1/completions", json={**body, "steering": [{"vector": "cold"}]})
        error = assert_error(cold, 503)
        assert "registry unavailable" in error["message"] and cold.headers["retry-after"] == "1"
        assert (await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).status_code == 200
        await c.aclose()
