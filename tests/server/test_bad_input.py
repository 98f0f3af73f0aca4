"""Hostile input that the route tests do not cover: oversized bodies, too many terms or layers, huge files.
Every answer is a 4xx in OpenAI's shape and nothing is stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.server.test_routes import MODEL, assert_error, b64, make_client, upload


async def test_oversized_bodies_get_413_and_store_nothing(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path, max_vector_bytes=2048)
    async with app.router.lifespan_context(app):
        big = upload("big", {"1": b64(np.ones(8)), "2": "A" * 4096})
        assert_error(await c.post("/v1/steering/vectors", json=big), 413)
        files = {"file": ("v.npy", b"\x93NUMPY" + b"0" * 4096, "application/octet-stream")}
        assert_error(await c.post("/v1/steering/vectors/import", data={"id": "big"}, files=files), 413)
        assert (await c.get("/v1/steering/vectors")).json()["data"] == []
    await c.aclose()


async def test_too_many_terms_or_layers_are_refused(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        too_many_layers = upload("wide", {str(k): b64(np.ones(8)) for k in range(5)})  # the model has 4
        assert_error(await c.post("/v1/steering/vectors", json=too_many_layers), 400, "layers")
        assert (await c.post("/v1/steering/vectors", json=upload())).status_code == 201
        terms = [{"vector": "r", "strength": 0.1}] * 17  # max_terms is 16
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "steering": terms}
        assert_error(await c.post("/v1/completions", json=body), 400, "steering")
        same_site = [{"vector": "r", "strength": 0.1, "layers": [1]}] * 5  # 4 may share one (layer, site)
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "steering": same_site}
        assert_error(await c.post("/v1/completions", json=body), 400, "steering")
        assert [v["id"] for v in (await c.get("/v1/steering/vectors")).json()["data"]] == ["r"]
        assert (
            await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        ).status_code == 200
    await c.aclose()
