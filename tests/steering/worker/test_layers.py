"""Decoder layers are found from the model's own layer list, whatever their class; a layer that cannot carry a
site is refused at start-up naming what it lacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steering.errors import UnsupportedModelError
from steering.vectors import SITES
from steering.worker.layers import decoder_layers, split_residual


class SplitLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Identity()

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden_states, hidden_states if residual is None else residual


class SingleLayer(nn.Module):
    def __init__(self, mlp: bool = True, attn_name: str = "self_attn") -> None:
        super().__init__()
        setattr(self, attn_name, nn.Identity())
        if mlp:
            self.mlp = nn.Identity()

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class Inner(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class CausalLM(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.model = Inner(layers)


class Multimodal(nn.Module):
    """Layers deeper than `model.layers`, plus a shallower-named vision tower list further down."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.language_model = CausalLM(layers)
        self.vision = nn.Module()
        self.vision.encoder = nn.Module()
        self.vision.encoder.blocks = nn.Module()
        self.vision.encoder.blocks.layers = nn.ModuleList([nn.Identity()])


class PPMissingLayer(nn.Identity):
    pass


def test_layers_of_any_class_are_found_in_order_and_other_stages_skipped() -> None:
    layers: list[nn.Module] = [SplitLayer(), PPMissingLayer(), SingleLayer()]
    found = decoder_layers(CausalLM(layers), SITES)
    assert [(i, type(layer)) for i, layer in found] == [(0, SplitLayer), (2, SingleLayer)]


def test_the_shallowest_layer_list_is_used_when_model_layers_is_absent() -> None:
    found = decoder_layers(Multimodal([SplitLayer(), SplitLayer()]), SITES)
    assert [type(layer) for _, layer in found] == [SplitLayer, SplitLayer]


def test_split_residual_is_read_from_the_forward_signature() -> None:
    assert split_residual(SplitLayer())
    assert not split_residual(SingleLayer())


def test_attention_under_another_name_is_accepted() -> None:
    assert decoder_layers(CausalLM([SingleLayer(attn_name="attn")]), SITES)


def test_a_layer_without_what_a_site_needs_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedModelError, match="no MLP submodule.*site 'mlp'"):
        decoder_layers(CausalLM([SingleLayer(mlp=False)]), SITES)
    assert decoder_layers(CausalLM([SingleLayer(mlp=False)]), ("residual", "attn"))
    with pytest.raises(UnsupportedModelError, match="no attention submodule"):
        decoder_layers(CausalLM([SingleLayer(attn_name="mixer")]), SITES)
    with pytest.raises(UnsupportedModelError, match="no decoder layer list"):
        decoder_layers(nn.Linear(2, 2), SITES)


@pytest.mark.parametrize("eager", [True, False])
def test_eager_steps_call_only_the_ops_the_step_uses(monkeypatch: pytest.MonkeyPatch, eager: bool) -> None:
    """Eagerly, a quiet step (nothing to steer, gate or capture) returns the layer's own output without an op call,
    and a steered step calls the op only at the (layer, site)s its requests use; where the forward may be traced
    (not eager) every op is always called (each skips on its own, inside the graph)."""
    from steering.worker import layers as layer_patch
    from tests.steering.worker.test_tables import make_state

    calls: list[str] = []
    monkeypatch.setattr(layer_patch, "steer_in_place", lambda *a: calls.append(f"steer {a[-1]}"))
    monkeypatch.setattr(layer_patch, "capture_rows", lambda *a: calls.append("capture"))
    state = make_state()
    state.eager_skip = eager
    layer = SplitLayer()
    layer_patch.install([(0, layer)], state)
    mlp = state.site_index[(0, "mlp")]
    # SplitLayer's forward never calls its attention: the layer's own sites and the capture
    every = sorted([*(f"steer {state.site_index[(0, site)]}" for site in ("mlp", "residual")), "capture"])
    hidden = torch.ones(3, 8)
    for quiet, channels, expected in ((True, {}, []), (False, {mlp: 1}, [f"steer {mlp}"])):
        calls.clear()
        state.quiet, state.step_channels = quiet, [channels.get(i, 0) for i in range(len(state.tables))]
        out, _ = layer(torch.arange(3), hidden, None)
        assert torch.equal(out, hidden)
        assert sorted(calls) == (expected if eager else every), (quiet, calls)
