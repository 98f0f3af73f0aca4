"""Where a request's steering comes from (steering.sources), without HTTP: the body fields, the header, presets
as models and in the body, and how they combine or are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from steering.errors import BadRequestError, ModelNotFoundError, UnknownVectorError
from steering.sources import SteeringFields, SteeringSources, parse_header
from steering.spec import SteeringTerm
from steering.store.base import Preset
from steering.store.cache import CachedRegistry
from steering.store.embedded import EmbeddedStore
from steering.vectors import VectorDefaults
from tests.server.fake_engine import FakeEngine

BASE = "base-model"


@pytest.fixture
async def sources(tmp_path: Path) -> AsyncIterator[SteeringSources]:
    store = EmbeddedStore(tmp_path / "registry.sqlite3", "test")
    direction = np.ones(8, dtype=np.float32)
    await store.add_vector("r", {1: direction, 2: direction}, VectorDefaults(strength=0.5), "", {}, {})
    await store.put_preset(Preset(name="down", steering=[SteeringTerm(vector="r", strength=-0.5)]))
    registry = CachedRegistry(store)
    await registry.start()
    yield SteeringSources(registry, FakeEngine(), BASE, adapters=lambda: ("a-lora",))
    await store.close()


def test_body_fields_are_validated_with_the_bad_field_named() -> None:
    fields = SteeringFields.of({"steering": "down", "experiment": "e", "reasoning_budget": 5, "messages": []})
    assert (fields.steering, fields.experiment, fields.reasoning_budget) == ("down", "e", 5)
    assert SteeringFields.of(["not", "a", "dict"]) == SteeringFields()
    for body, param in (
        ({"reasoning_budget": True}, "reasoning_budget"),
        ({"reasoning_budget": 0}, "reasoning_budget"),
        ({"experiment": 3}, "experiment"),
        ({"steering": [{"vector": "r", "strength": "strong"}]}, "steering"),
    ):
        with pytest.raises(BadRequestError) as caught:
            SteeringFields.of(body)
        assert caught.value.param == param, body


def test_the_header_lists_terms_with_optional_versions_and_strengths() -> None:
    terms = parse_header("r:-0.5, other@3")
    assert [(t.vector, t.strength) for t in terms] == [("r", -0.5), ("other@3", None)]
    for bad in ("r:nan", "r:,", "r:x"):
        with pytest.raises(BadRequestError):
            parse_header(bad)


async def test_a_preset_as_model_comes_first_and_extra_terms_make_it_custom(sources: SteeringSources) -> None:
    alone = await sources.for_request("down", None, None)
    assert alone.preset == "down" and alone.label == "down" and alone.spec is not None
    assert [t.strength for t in alone.spec.terms] == [-0.5]
    mixed = await sources.for_request("down", [SteeringTerm(vector="r", strength=0.25, layers=[2])], None)
    assert mixed.label == "custom" and [t.strength for t in mixed.spec.terms] == [-0.5, 0.25]  # type: ignore[union-attr]
    by_name = await sources.for_request(BASE, "down", None)
    assert by_name.preset == "down"
    assert not (await sources.for_request("a-lora", None, None)).steered  # vLLM's own adapter, unsteered


async def test_conflicts_and_unknown_names_are_refused(sources: SteeringSources) -> None:
    with pytest.raises(BadRequestError, match="not both"):
        await sources.for_request(BASE, [SteeringTerm(vector="r")], "r:0.1")
    with pytest.raises(ModelNotFoundError):
        await sources.for_request("no-such-preset", None, None)
    with pytest.raises(BadRequestError, match="unknown steering preset"):
        await sources.for_request(BASE, "no-such-preset", None)
    with pytest.raises(UnknownVectorError):
        await sources.for_request(BASE, None, "missing:0.1")
    with pytest.raises(BadRequestError, match="not enabled"):
        await sources.for_request("experiment/e", None, None)
