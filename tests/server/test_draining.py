"""While draining (after SIGTERM): generation requests and /health get 503 with Retry-After; reads still work."""

from __future__ import annotations

from pathlib import Path

from tests.server.test_routes import MODEL, assert_error, make_client


async def test_draining_refuses_new_generation_with_503(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        assert (await c.get("/health")).status_code == 200
        app.state.steerserve.serving.draining = True
        for path, body in [
            ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2}),
            ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ]:
            refused = await c.post(path, json=body)
            assert assert_error(refused, 503)["code"] == "service_unavailable"
            assert refused.headers["retry-after"] == "1"
        assert (await c.get("/health")).status_code == 503
        assert (await c.get("/v1/models")).status_code == 200
    await c.aclose()
