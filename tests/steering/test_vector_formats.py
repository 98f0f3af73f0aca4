"""Vector file formats without a server: detection, llama.cpp's model hint, and what cannot be written."""

from __future__ import annotations

import numpy as np
import pytest

from steering import vector_formats
from steering.errors import InvalidSteeringError


def test_each_written_format_is_detected_and_reads_back_bit_exact() -> None:
    layers = {1: np.linspace(-1, 1, 6, dtype=np.float32), 2: np.arange(1, 7, dtype=np.float32)}
    for fmt in vector_formats.FORMATS:
        data = vector_formats.encode(layers, fmt, num_layers=3, metadata={"id": "v"}, model_hint="qwen2")
        assert vector_formats.detect_format(data) == fmt
        decoded = vector_formats.decode(data, 3)
        assert {k: v.tobytes() for k, v in decoded.layers.items()} == {k: v.tobytes() for k, v in layers.items()}


def test_model_hint_is_the_model_type() -> None:
    assert vector_formats.model_hint("Qwen2ForCausalLM") == "qwen2"
    assert vector_formats.model_hint("LlamaForCausalLM") == "llama"


def test_layer_zero_has_no_gguf_name_and_truncated_files_are_refused() -> None:
    with pytest.raises(InvalidSteeringError):
        vector_formats.encode({0: np.ones(4, np.float32)}, "gguf", num_layers=2, metadata={}, model_hint="llama")
    data = vector_formats.encode({1: np.ones(4, np.float32)}, "gguf", num_layers=2, metadata={}, model_hint="llama")
    with pytest.raises(InvalidSteeringError):
        vector_formats.decode(data[: len(data) - 24], 2)  # into the tensor data, past the padding


def _gguf_with(tensors: dict[str, np.ndarray]) -> bytes:
    """A control vector written with the gguf package, tensors as given (shapes included)."""
    import tempfile
    from pathlib import Path

    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.gguf"
        writer = gguf.GGUFWriter(str(path), "controlvector")
        writer.add_string("controlvector.model_hint", "llama")
        writer.add_int32("controlvector.layer_count", len(tensors))
        for name, values in tensors.items():
            writer.add_tensor(name, values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def test_gguf_direction_of_two_dimensions_is_refused_as_llama_cpp_does() -> None:
    data = _gguf_with({"direction.1": np.ones((2, 4), np.float32)})
    with pytest.raises(InvalidSteeringError, match=r"shape \[4, 2\], expected one dimension"):
        vector_formats.decode(data, 3)
    # a trailing dimension of 1 is still one-dimensional for ggml
    assert vector_formats.ggml_dims([4, 1]) == 1 and vector_formats.ggml_dims([4, 2]) == 2


def test_gguf_all_zero_direction_is_skipped_not_refused() -> None:
    data = _gguf_with({"direction.1": np.zeros(4, np.float32), "direction.2": np.arange(1, 5, dtype=np.float32)})
    decoded = vector_formats.decode(data, 3)
    assert sorted(decoded.layers) == [2]
    with pytest.raises(InvalidSteeringError, match="no direction"):
        vector_formats.decode(_gguf_with({"direction.1": np.zeros(4, np.float32)}), 3)


def test_gguf_layer_count_is_written_as_int32_like_cvector_generator() -> None:
    import tempfile
    from pathlib import Path

    import gguf

    data = vector_formats.encode({1: np.ones(4, np.float32)}, "gguf", num_layers=2, metadata={}, model_hint="llama")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.gguf"
        path.write_bytes(data)
        field = gguf.GGUFReader(str(path)).fields["controlvector.layer_count"]
        assert field.types == [gguf.GGUFValueType.INT32] and field.contents() == 1
