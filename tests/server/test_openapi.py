"""The OpenAPI schema declares the errors the server really sends: 400 in OpenAI's shape, never FastAPI's 422."""

from __future__ import annotations

from pathlib import Path

from tests.server.test_routes import assert_error, make_client


async def test_schema_declares_400_not_422_and_a_validation_error_is_400(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        schema = (await c.get("/openapi.json")).json()
        operations = [(path, op) for path, ops in schema["paths"].items() for op in ops.values()]
        assert all("422" not in op["responses"] for _, op in operations)
        with_body = [(path, op) for path, op in operations if "requestBody" in op or op.get("parameters")]
        assert with_body and all("400" in op["responses"] for _, op in with_body)
        assert "HTTPValidationError" not in schema["components"]["schemas"]
        assert_error(await c.post("/v1/completions", json={"prompt": 3}), 400)
    await c.aclose()
