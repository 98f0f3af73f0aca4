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
