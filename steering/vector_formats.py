"""Steering vectors as files: safetensors (ours), GGUF control vectors (llama.cpp, repeng) and NumPy `.npy`.

Layer numbering is ours everywhere: layer L = the output of decoder block L, 0-based.

- **safetensors**: one float32 tensor `layer.L` per covered layer; metadata id, version, sha256, hidden_size.
- **GGUF** (llama.cpp control vectors, written with the `gguf` package): `general.architecture =
  controlvector`, `controlvector.model_hint` (the model type, e.g. `llama`), `controlvector.layer_count`, and
  (INT32, as llama.cpp's `cvector-generator` writes it) and one float32 1-D tensor `direction.N` per layer. A
  `direction.N` of more than one dimension is refused and an all-zero one is skipped, as llama.cpp does
  (it loads that row, which changes nothing). llama.cpp adds `direction.N` to the output of block N
  (0-based; `direction.0` is invalid there), so **N is our layer index, unchanged**, and a GGUF vector is an
  `add` at site `residual`. Layer 0 cannot be written to GGUF.
- **npy**: a float32 array `[num_layers, hidden]` with all-zero rows for uncovered layers; on import also a
  1-D `[hidden]` array for one layer named by the caller.

Every decoder checks dtype, shape and layer range, and returns float32 arrays whose bytes are the file's
own, so import → export is bit-exact.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from steering.errors import InvalidSteeringError
from steering.vectors import Float32Array

FORMATS = ("safetensors", "gguf", "npy")
_GGUF_MAGIC = b"GGUF"
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class DecodedVector:
    """Layers read from a file, the format they came in, and what the file said about itself."""

    layers: dict[int, Float32Array]
    format: str
    metadata: dict[str, str] = field(default_factory=dict)


def detect_format(data: bytes) -> str:
    """The format of `data` from its first bytes (GGUF and npy magic; safetensors' JSON header)."""
    if data.startswith(_GGUF_MAGIC):
        return "gguf"
    if data.startswith(_NPY_MAGIC):
        return "npy"
    if len(data) > 9:
        header = int.from_bytes(data[:8], "little")
        if 0 < header <= len(data) - 8 and data[8:9] == b"{":
            return "safetensors"
    raise InvalidSteeringError("unrecognised vector file: expected safetensors, GGUF or .npy", param="file")


def decode(data: bytes, num_layers: int, fmt: str | None = None, layer: int | None = None) -> DecodedVector:
    """Read a vector file for a model with `num_layers` layers (`layer`: where a 1-D npy array goes)."""
    fmt = fmt or detect_format(data)
    if fmt not in FORMATS:
        raise InvalidSteeringError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", param="format")
    try:
        if fmt == "safetensors":
            decoded = _decode_safetensors(data)
        elif fmt == "gguf":
            decoded = _decode_gguf(data)
        else:
            decoded = _decode_npy(data, num_layers, layer)
    except InvalidSteeringError:
        raise
    except Exception as exc:  # a malformed file: the parsers raise many kinds of errors
        raise InvalidSteeringError(f"cannot read the file as {fmt}: {exc}", param="file") from None
    _check_layers(decoded.layers, num_layers)
    return decoded


def encode(
    layers: Mapping[int, Float32Array],
    fmt: str,
    *,
    num_layers: int,
    metadata: Mapping[str, str],
    model_hint: str,
) -> bytes:
    """Write `layers` as `fmt` (`metadata`: id, version, sha256, hidden_size; `model_hint`: e.g. `llama`)."""
    if fmt == "safetensors":
        from safetensors.numpy import save

        tensors = {f"layer.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(layers.items())}
        return save(tensors, metadata=dict(metadata))
    if fmt == "gguf":
        return _encode_gguf(layers, model_hint, metadata.get("id", ""))
    if fmt == "npy":
        hidden = len(next(iter(layers.values())))
        table = np.zeros((num_layers, hidden), dtype=np.float32)
        for k, v in layers.items():
            table[k] = v
        buffer = io.BytesIO()
        np.save(buffer, table, allow_pickle=False)
        return buffer.getvalue()
    raise InvalidSteeringError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", param="format")


def model_hint(architecture: str) -> str:
    """llama.cpp's model hint from a Hugging Face architecture: `Qwen2ForCausalLM` -> `qwen2`."""
    return architecture.removesuffix("ForCausalLM").lower()


# ---- decoders ------------------------------------------------------------------------------------------------
def _float32(name: str, array: np.ndarray) -> Float32Array:
    if array.dtype != np.float32:
        raise InvalidSteeringError(f"{name} is {array.dtype}, expected float32", param="file")
    if array.ndim != 1:
        raise InvalidSteeringError(f"{name} has shape {list(array.shape)}, expected one dimension", param="file")
    return np.array(array, dtype=np.float32, copy=True)


def _decode_safetensors(data: bytes) -> DecodedVector:
    from safetensors import safe_open

    layers: dict[int, Float32Array] = {}
    with tempfile.TemporaryDirectory() as tmp:  # safe_open reads files; the header keeps the metadata
        path = Path(tmp) / "vector.safetensors"
        path.write_bytes(data)
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                match = re.fullmatch(r"layer\.(\d+)", name)
                if match is None:
                    raise InvalidSteeringError(f"tensor {name!r}: expected names layer.<L>", param="file")
                layers[int(match.group(1))] = _float32(name, handle.get_tensor(name))
    return DecodedVector(layers, "safetensors", metadata)


def _decode_gguf(data: bytes) -> DecodedVector:
    from gguf import GGMLQuantizationType, GGUFReader

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vector.gguf"
        path.write_bytes(data)
        reader = GGUFReader(str(path))
        metadata = {name: str(f.contents()) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        if metadata.get("general.architecture") != "controlvector":
            raise InvalidSteeringError(
                f"GGUF general.architecture is {metadata.get('general.architecture')!r}, expected 'controlvector'",
                param="file",
            )
        layers: dict[int, Float32Array] = {}
        for tensor in reader.tensors:
            match = re.fullmatch(r"direction\.(\d+)", tensor.name)
            if match is None:
                raise InvalidSteeringError(f"GGUF tensor {tensor.name!r}: expected direction.<N>", param="file")
            if tensor.tensor_type != GGMLQuantizationType.F32:
                raise InvalidSteeringError(f"GGUF tensor {tensor.name!r} is not F32", param="file")
            index = int(match.group(1))
            if index == 0:
                raise InvalidSteeringError("GGUF direction.0 is invalid in llama.cpp's convention", param="file")
            dims = [int(d) for d in tensor.shape]
            if ggml_dims(dims) != 1:  # llama.cpp refuses these too
                raise InvalidSteeringError(
                    f"GGUF tensor {tensor.name!r} has shape {dims}, expected one dimension", param="file"
                )
            values = np.asarray(tensor.data).reshape(-1)
            if values.size != int(tensor.n_elements):
                raise InvalidSteeringError(f"GGUF tensor {tensor.name!r} is truncated", param="file")
            if not values.any():
                continue  # llama.cpp loads an all-zero direction, which does nothing: so does ours (no layer)
            layers[index] = _float32(tensor.name, values)
    return DecodedVector(layers, "gguf", metadata)


def ggml_dims(shape: list[int]) -> int:
    """ggml's `n_dims`: trailing dimensions of size 1 do not count ([576, 1] is one-dimensional)."""
    dims = len(shape)
    while dims > 1 and shape[dims - 1] == 1:
        dims -= 1
    return dims


def _decode_npy(data: bytes, num_layers: int, layer: int | None) -> DecodedVector:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.float32:
        raise InvalidSteeringError(f"the array is {array.dtype}, expected float32", param="file")
    if array.ndim == 1:
        if layer is None:
            raise InvalidSteeringError("a 1-D array needs the layer it belongs to", param="layer")
        index = layer % num_layers if -num_layers <= layer < num_layers else layer  # negative: from the end
        return DecodedVector({index: array.copy()}, "npy")
    if array.ndim != 2 or array.shape[0] != num_layers:
        raise InvalidSteeringError(
            f"the array has shape {list(array.shape)}; expected [{num_layers}, hidden] (one row per layer, "
            "zeros where uncovered) or [hidden] with a layer",
            param="file",
        )
    layers = {index: row.copy() for index, row in enumerate(array) if row.any()}
    return DecodedVector(layers, "npy")


def _check_layers(layers: Mapping[int, Float32Array], num_layers: int) -> None:
    if not layers:
        raise InvalidSteeringError("the file holds no direction", param="file")
    for index, data in layers.items():
        if not 0 <= index < num_layers:
            raise InvalidSteeringError(f"layer {index} does not exist (the model has {num_layers})", param="file")
        if not np.isfinite(data).all():
            raise InvalidSteeringError(f"layer {index} holds NaN or Inf", param="file")
        if not data.any():
            raise InvalidSteeringError(f"layer {index} is all zeros", param="file")


# ---- GGUF writer -------------------------------------------------------------------------------------------
def _encode_gguf(layers: Mapping[int, Float32Array], hint: str, name: str) -> bytes:
    from gguf import GGUFWriter

    if 0 in layers:
        raise InvalidSteeringError(
            "layer 0 cannot be written as a GGUF control vector (llama.cpp starts at direction.1)", param="format"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vector.gguf"
        writer = GGUFWriter(str(path), "controlvector")
        if name:
            writer.add_name(name)
        writer.add_string("controlvector.model_hint", hint)
        writer.add_int32("controlvector.layer_count", len(layers))  # INT32, as llama.cpp's cvector-generator
        for index in sorted(layers):
            writer.add_tensor(f"direction.{index}", np.ascontiguousarray(layers[index], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()
