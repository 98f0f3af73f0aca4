"""Schemathesis against the real server's own OpenAPI schema (real HTTP, real engine, real redis-server):
at least 1,000 generated requests, valid and invalid, on steerserve's routes and the generation routes it
steers; no 5xx, every status and body as the schema declares, every error in OpenAI's shape (Anthropic's on
/v1/messages), and the engine still answers afterwards. Generation lengths are capped by the hooks in
tests/e2e/fuzz_hooks.py so the run stays bounded."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, SERVED

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


async def fuzz(server: str, workdir: Path, count: Path, include: str, phases: str, examples: int) -> str:
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st), "run", f"{server}/openapi.json",
        "--header", f"Authorization:{ADMIN['Authorization']}",
        "--checks", f"{CHECKS},openai_error_shape",
        "--phases", phases,
        "--max-examples", str(examples),
        "--seed", "0",
        "--workers", "1",  # one thread: CPython 3.11's ast.parse (hypothesis' lambda reprs) is not thread-safe
        "--no-shrink",
        "--generation-database", "none",
        "--request-timeout", "60",
        "--include-path-regex", include,
        "--exclude-path", "/v1/steering/vectors/extract",  # starts extraction jobs: covered by its own tests
        "--max-failures", "20",
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks",
        "STEERSERVE_FUZZ_COUNT": str(count),
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    return text


async def test_schemathesis_finds_no_server_errors(server: str, tmp_path: Path) -> None:
    count = tmp_path / "calls.txt"
    # steerserve's own routes: every phase (the coverage phase walks each schema's boundaries)
    await fuzz(server, tmp_path, count, "^/v1/(steering/|models)", "examples,coverage,fuzzing", 40)
    # the steered generation routes: vLLM's request schemas are large (the coverage phase alone makes 10,000+
    # cases for /v1/responses), so random generation only, and a steering field in every body (fuzz_hooks)
    await fuzz(server, tmp_path, count, "^/v1/(chat/completions|completions|responses|messages)$", "fuzzing", 60)
    calls = count.read_text().splitlines() if count.exists() else []
    assert len(calls) >= 1000, f"only {len(calls)} requests were generated"
    print(f"schemathesis: {len(calls)} requests, {len(set(calls))} distinct operations+paths")
    async with httpx.AsyncClient(base_url=server, headers=ADMIN, timeout=60) as http:
        answer: Any = await http.post("/v1/completions", json={"model": SERVED, "prompt": "hi", "max_tokens": 2})
        assert answer.status_code == 200 and (await http.get("/health")).status_code == 200
