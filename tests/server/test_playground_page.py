"""The playground page is public; the API calls it makes still need the key."""

from __future__ import annotations

from pathlib import Path

from tests.server.test_routes import make_client


async def test_page_loads_without_a_key_but_its_api_calls_need_one(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path, api_key="k", admin_key="adm")
    async with app.router.lifespan_context(app):
        page = await c.get("/playground")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for needed in ('id="api-key"', 'id="strength"', 'id="steered-text"', 'id="plain-text"', "/report"):
            assert needed in page.text
        assert (await c.get("/v1/models")).status_code == 401
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer k"})).status_code == 200
    await c.aclose()
