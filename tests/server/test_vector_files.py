"""Vector files over HTTP: import (multipart, format detected) and export as safetensors, GGUF and .npy."""

from __future__ import annotations

import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save

from steering import vector_formats
from tests.server.test_routes import assert_error, make_client

HIDDEN, NUM_LAYERS = 8, 4


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    c, engine, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        yield c, engine
    await c.aclose()


def directions(*layers: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal(HIDDEN).astype(np.float32) for layer in layers}


def repeng_style_gguf(layers: dict[int, np.ndarray], arch: str = "controlvector") -> bytes:
    """A control vector written the way repeng's exporter writes one (gguf package, direction.N tensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_string(f"{arch}.model_hint", "llama")
        writer.add_uint32(f"{arch}.layer_count", len(layers))
        for layer, data in layers.items():
            writer.add_tensor(f"direction.{layer}", data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


async def post_file(c: Any, vector_id: str, data: bytes, **form: Any) -> Any:
    return await c.post(
        "/v1/steering/vectors/import",
        data={"id": vector_id, **{k: str(v) for k, v in form.items()}},
        files={"file": ("vector.bin", data, "application/octet-stream")},
    )


async def test_gguf_control_vector_imports_as_residual_add_and_round_trips(client: Any) -> None:
    c, _ = client
    layers = directions(1, 3)
    created = await post_file(c, "cv", repeng_style_gguf(layers))
    assert created.status_code == 201, created.text
    assert created.json()["layers"] == [1, 3] and created.json()["hidden_size"] == HIDDEN
    info = (await c.get("/v1/steering/vectors/cv")).json()
    assert info["defaults"]["op"] == "add" and info["defaults"]["site"] == "residual"
    assert info["provenance"]["imported"]["format"] == "gguf"
    assert info["provenance"]["imported"]["controlvector.model_hint"] == "llama"
    exported = await c.get("/v1/steering/vectors/cv/data", params={"format": "gguf"})
    assert exported.status_code == 200 and exported.headers["content-disposition"].endswith('.gguf"')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.gguf"
        path.write_bytes(exported.content)
        reader = gguf.GGUFReader(str(path))
        assert reader.fields["general.architecture"].contents() == "controlvector"
        assert reader.fields["controlvector.layer_count"].contents() == 2
        back = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(back) == ["direction.1", "direction.3"]
    for layer, data in layers.items():
        assert back[f"direction.{layer}"].tobytes() == data.tobytes()  # bit-exact


@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "npy"])
async def test_export_then_import_is_bit_exact_in_every_format(client: Any, fmt: str) -> None:
    c, _ = client
    layers = directions(1, 2)
    first = await post_file(
        c, "src", npy(np.stack([np.zeros(HIDDEN, np.float32), layers[1], layers[2], np.zeros(HIDDEN, np.float32)]))
    )
    assert first.status_code == 201, first.text
    exported = (await c.get("/v1/steering/vectors/src/data", params={"format": fmt})).content
    again = await post_file(c, "copy", exported)
    assert again.status_code == 201, again.text
    assert again.json()["sha256"] == first.json()["sha256"]  # the content hash covers every float's bytes
    second = (await c.get("/v1/steering/vectors/copy/data", params={"format": fmt})).content
    a, b = vector_formats.decode(exported, NUM_LAYERS), vector_formats.decode(second, NUM_LAYERS)
    assert {k: v.tobytes() for k, v in a.layers.items()} == {k: v.tobytes() for k, v in b.layers.items()}
    assert {k: v.tobytes() for k, v in a.layers.items()} == {k: v.tobytes() for k, v in layers.items()}
    if fmt == "npy":  # no metadata: the whole file is the same
        assert second == exported


async def test_one_dimensional_npy_needs_its_layer_and_defaults_can_be_given(client: Any) -> None:
    c, _ = client
    data = npy(directions(0)[0])
    assert_error(await post_file(c, "one", data), 400, "layer")
    ok = await post_file(c, "one", data, layer=-1, defaults='{"op": "project", "site": "mlp", "strength": 0.5}')
    assert ok.status_code == 201 and ok.json()["layers"] == [NUM_LAYERS - 1]
    defaults = (await c.get("/v1/steering/vectors/one")).json()["defaults"]
    assert (defaults["op"], defaults["site"], defaults["strength"]) == ("project", "mlp", 0.5)


async def test_safetensors_of_our_layout_imports(client: Any) -> None:
    c, _ = client
    layers = directions(2)
    created = await post_file(c, "st", save({"layer.2": layers[2]}), format="safetensors")
    assert created.status_code == 201 and created.json()["layers"] == [2]


@pytest.mark.parametrize(
    ("data", "form", "param"),
    [
        (b"not a vector file at all", {}, "file"),
        (repeng_style_gguf(directions(1), arch="llama"), {}, "file"),
        (repeng_style_gguf(directions(0, 1)), {}, "file"),  # direction.0 is invalid in llama.cpp
        (repeng_style_gguf(directions(9)), {}, "file"),  # no such layer
        (npy(np.ones((NUM_LAYERS, HIDDEN + 1), np.float32)), {}, "file"),  # wrong hidden size
        (npy(np.ones((NUM_LAYERS, HIDDEN), np.float64)), {}, "file"),  # not float32
        (npy(np.full((NUM_LAYERS, HIDDEN), np.nan, np.float32)), {}, "file"),
        (npy(np.ones((NUM_LAYERS + 1, HIDDEN), np.float32)), {}, "file"),
        (save({"weights": np.ones(HIDDEN, np.float32)}), {}, "file"),  # not layer.<L>
        (npy(np.ones((NUM_LAYERS, HIDDEN), np.float32)), {"format": "gguf"}, "file"),  # not what it says
        (npy(np.ones((NUM_LAYERS, HIDDEN), np.float32)), {"format": "onnx"}, "body.format"),
        (npy(np.ones((NUM_LAYERS, HIDDEN), np.float32)), {"defaults": "{not json"}, "defaults"),
    ],
)
async def test_bad_files_get_400_and_store_nothing(client: Any, data: bytes, form: dict[str, str], param: str) -> None:
    c, _ = client
    assert_error(await post_file(c, "bad", data, **form), 400, param)
    assert (await c.get("/v1/steering/vectors")).json()["data"] == []


async def test_bad_ids_and_export_limits(client: Any) -> None:
    c, _ = client
    data = npy(np.ones((NUM_LAYERS, HIDDEN), np.float32))
    assert_error(await post_file(c, "../etc", data), 400)
    assert (await post_file(c, "all", data)).status_code == 201
    assert_error(await c.get("/v1/steering/vectors/all/data", params={"format": "gguf"}), 400, "format")  # layer 0
    assert_error(await c.get("/v1/steering/vectors/all/data", params={"format": "pt"}), 400)
    assert_error(await c.get("/v1/steering/vectors/missing/data"), 404)


async def test_import_needs_the_admin_key(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path, api_key="k", admin_key="adm")
    async with app.router.lifespan_context(app):
        data = npy(np.ones((NUM_LAYERS, HIDDEN), np.float32))
        c.headers["Authorization"] = "Bearer k"
        assert_error(await post_file(c, "v", data), 403)
        c.headers["Authorization"] = "Bearer adm"
        assert (await post_file(c, "v", data)).status_code == 201
    await c.aclose()
