"""The Python client (sync and async), the openai helper and the `steerserve` CLI against the real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from typer.testing import CliRunner

from clients.cli import app
from clients.client import AsyncSteerClient, SteerClient, SteerError
from clients.openai_steering import steering_body, steering_header, with_steering
from tests.e2e.conftest import SERVED
from tests.e2e.engine_helpers import forcing_direction

pytestmark = pytest.mark.engine
ADMIN_KEY, USER_KEY = "admin-secret", "user-secret"


async def test_async_client_vectors_presets_experiments_and_errors(server: str, tiny_llama: Path) -> None:
    async with AsyncSteerClient(server, admin_key=ADMIN_KEY) as steer:
        force = forcing_direction(tiny_llama, 7)
        created = await steer.push_vector("cli-force", force, description="t")
        assert created.layers == list(force) and created.version >= 1
        info = await steer.get_vector("cli-force")
        assert info.sha256 == created.sha256 and info.description == "t"
        assert "cli-force" in [v.id for v in await steer.list_vectors()]
        gguf = await steer.export_vector("cli-force", "gguf")
        copy = await steer.import_vector("cli-force-copy", gguf)
        assert copy.sha256 == created.sha256  # GGUF round trip, bit-exact
        preset = await steer.set_preset("cli-up", [{"vector": "cli-force", "strength": 1.0}], "forces token 7")
        assert (await steer.get_preset("cli-up")).steering[0].vector == preset.steering[0].vector == "cli-force"
        experiment = await steer.put_experiment("cli-ab", [{"name": "off"}, {"name": "on", "steering": "cli-up"}])
        assert [a.name for a in experiment.arms] == ["off", "on"]
        report = await steer.experiment_report("cli-ab")
        assert [a.name for a in report.arms] == ["off", "on"] and report.arms[0].requests == 0
        with pytest.raises(SteerError) as missing:
            await steer.get_vector("no-such-vector")
        assert missing.value.status_code == 404 and missing.value.error.type
        with pytest.raises(SteerError) as bad:
            await steer.set_preset("cli-bad", [{"vector": "cli-force", "strength": 1.0, "layers": [99]}])
        assert bad.value.status_code == 400 and bad.value.error.param is not None
        await steer.delete_experiment("cli-ab")
        await steer.delete_preset("cli-up")
        await steer.delete_vector("cli-force-copy")
    async with AsyncSteerClient(server, api_key=USER_KEY) as reader:
        assert await reader.get_vector("cli-force")
        with pytest.raises(SteerError) as denied:
            await reader.delete_vector("cli-force")
        assert denied.value.status_code == 403


async def test_openai_helper_steers_the_official_client(server: str, tiny_llama: Path) -> None:
    async with AsyncSteerClient(server, admin_key=ADMIN_KEY) as steer:
        await steer.push_vector("sdk-force", forcing_direction(tiny_llama, 11))
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key=USER_KEY)
    args: dict[str, Any] = {"model": SERVED, "prompt": "hello", "max_tokens": 4, "temperature": 0}
    plain = await client.completions.create(**args)
    by_header = await with_steering(client, {"vector": "sdk-force", "strength": 1.0}).completions.create(**args)
    by_body = await client.completions.create(
        **args, extra_body=steering_body({"vector": "sdk-force", "strength": 1.0})
    )
    assert by_header.choices[0].text == by_body.choices[0].text != plain.choices[0].text
    assert steering_header({"vector": "a@2", "strength": -0.5}, {"vector": "b"}) == "a@2:-0.5,b"
    with pytest.raises(ValueError):
        steering_header({"vector": "a", "layers": [1]})  # the header carries no layers


async def test_sync_client_and_cli(server: str, tiny_llama: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"STEERSERVE_URL": server, "STEERSERVE_ADMIN_KEY": ADMIN_KEY}

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    def scenario() -> None:
        hidden = json.loads((tiny_llama / "config.json").read_text())["hidden_size"]
        direction = np.linspace(-1, 1, hidden, dtype=np.float32)
        np.save(tmp_path / "one.npy", direction)
        assert "stored cli-npy v1" in cli(
            "vectors", "import", str(tmp_path / "one.npy"), "--id", "cli-npy", "--layer", "1"
        )
        listed = json.loads(cli("vectors", "list", "--json"))
        assert "cli-npy" in [v["id"] for v in listed]
        cli("vectors", "export", "cli-npy", "--format", "gguf", "-o", str(tmp_path / "v.gguf"))
        assert json.loads(cli("vectors", "import", str(tmp_path / "v.gguf"), "--id", "cli-gguf", "--json"))[
            "layers"
        ] == [1]
        cli("vectors", "pull", "cli-npy", "-o", str(tmp_path / "bundle.json"))
        pushed = json.loads(cli("vectors", "push", str(tmp_path / "bundle.json"), "--id", "cli-pushed", "--json"))
        with SteerClient(server, admin_key=ADMIN_KEY) as steer:
            original, copy = steer.get_vector("cli-npy"), steer.get_vector("cli-pushed")
            assert pushed["sha256"] == original.sha256 == copy.sha256
            assert copy.provenance["pulled_from"]["sha256"] == original.sha256
        assert "cli-npy" in cli("vectors", "show", "cli-npy")
        cli("presets", "set", "cli-preset", "--term", "cli-npy:0.5", "--description", "half")
        assert json.loads(cli("presets", "list", "--json"))[0]["name"] == "cli-preset"
        cli("presets", "delete", "cli-preset")
        assert "error: 404" in cli("vectors", "show", "nope", code=1)
        chat = runner.invoke(
            app,
            ["chat", "--vector", "cli-npy", "--strength", "0.5", "--max-tokens", "4", "--api-key", USER_KEY],
            input="hi\n/strength 0\nagain\n/compare\n/quit\n",
            env=env,
        )
        assert chat.exit_code == 0, chat.output
        assert (
            chat.output.count(" tokens, ") == 3 and "reflection markers" in chat.output and "unsteered:" in chat.output
        )
        for vector_id in ("cli-npy", "cli-gguf", "cli-pushed"):
            cli("vectors", "delete", vector_id)

    await asyncio.to_thread(scenario)  # the server shares this event loop: block a thread, not the loop
