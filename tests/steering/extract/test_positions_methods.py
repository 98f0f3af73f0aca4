"""Reflection positions, directions and the layer scan on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from steering.extract.methods import (
    condition_threshold,
    diffmean,
    pca_direction,
    probe_accuracy,
    probe_direction,
    recommend_layer,
    scan_layer,
)
from steering.extract.positions import trace_positions
from steering.reflection import count_markers, keyword_spans


def char_tokens(text: str) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(len(text))]


def test_positions_one_per_episode_and_delimiters_far_from_keywords() -> None:
    prompt = "Q\n\n"
    body = "a=1\n\nb=2\n\nWait, let me re-check: b=2.\n\n" + "c=3\n\n" * 20 + "done"
    text = prompt + body
    found = trace_positions(text, char_tokens(text), start=len(prompt), horizon=12, min_tail=3, episode_gap=20)
    wait_at = text.index("Wait")
    assert found.reflective == [wait_at - 1]  # "re-check" in the same sentence adds no position
    assert all(text[: p + 1].endswith("\n\n") for p in found.non_reflective)
    assert all(p >= len(prompt) for p in found.non_reflective)  # the prompt's delimiter never counts
    near = [p for p in range(len(prompt), wait_at) if text[: p + 1].endswith("\n\n") and wait_at - p <= 12]
    assert near and not set(near) & set(found.non_reflective)  # keyword within the horizon: excluded
    assert max(found.non_reflective) < len(text) - 3


def test_keywords_are_the_papers_list_case_insensitive() -> None:
    assert count_markers("WAIT. Let me recheck, re-evaluate and examine again; try again.") == 5
    assert keyword_spans("no reflection here") == []


def test_diffmean_pca_and_scan_find_the_planted_direction() -> None:
    rng = np.random.default_rng(0)
    hidden = 32
    planted = np.zeros(hidden)
    planted[3] = 1.0
    negative = rng.standard_normal((400, hidden))
    positive = rng.standard_normal((300, hidden)) + 2.0 * planted
    v = diffmean(positive, negative)
    assert abs(v @ planted) / np.linalg.norm(v) > 0.95 and abs(np.linalg.norm(v) - 2.0) < 0.3
    pc = pca_direction(positive, negative)
    assert pc @ planted > 0 and abs(pc @ planted) / np.linalg.norm(pc) > 0.9
    strong = scan_layer(0, positive, negative)
    weak = scan_layer(1, rng.standard_normal((300, hidden)) + 0.2 * planted, negative)
    assert strong.probe_accuracy > 0.8 > weak.probe_accuracy > 0.4
    assert recommend_layer([weak, strong]) == 0
    assert 0.45 < probe_accuracy(rng.standard_normal((200, hidden)), rng.standard_normal((200, hidden))) < 0.6


def test_condition_threshold_is_the_best_cut_on_the_projection() -> None:
    rng = np.random.default_rng(3)
    axis = np.zeros(6)
    axis[2] = 1.0
    positive = rng.standard_normal((200, 6)) + 3.0 * axis
    negative = rng.standard_normal((150, 6)) - 1.0 * axis
    theta, accuracy = condition_threshold(positive, negative, diffmean(positive, negative))
    unit = diffmean(positive, negative) / np.linalg.norm(diffmean(positive, negative))
    measured = 0.5 * ((positive @ unit > theta).mean() + (negative @ unit <= theta).mean())
    assert accuracy == pytest.approx(measured) and accuracy > 0.95
    for shifted in (theta - 0.5, theta + 0.5):  # no other cut does better
        other = 0.5 * ((positive @ unit > shifted).mean() + (negative @ unit <= shifted).mean())
        assert other <= accuracy
    assert condition_threshold(negative, positive, diffmean(negative, positive))[1] == pytest.approx(accuracy)


def test_probe_direction_separates_where_the_difference_of_means_is_pulled_by_noise() -> None:
    # the classes differ along a quiet axis (1) and, by more, along a noisy one (0), whose noise is shared with a
    # third axis: the mean difference leans on the noisy axis, a logistic probe cancels the shared noise
    rng = np.random.default_rng(5)
    rows = 2000

    def sample(shift: float) -> np.ndarray:
        noise = 4.0 * rng.standard_normal(rows)
        x = 0.3 * rng.standard_normal((rows, 4))
        x[:, 0] += noise + 2.0 * shift
        x[:, 2] += noise
        x[:, 1] += 0.5 * shift
        return x

    positive, negative = sample(1.0), sample(0.0)
    _, by_means = condition_threshold(positive, negative, diffmean(positive, negative))
    probe = probe_direction(positive, negative)
    _, by_probe = condition_threshold(positive, negative, probe)
    assert by_means < 0.7 and by_probe > 0.95
    unit = probe / np.linalg.norm(probe)  # signed and scaled as the other methods: positives project higher, by
    assert np.linalg.norm(probe) == pytest.approx(diffmean(positive, negative) @ unit)  # the means' gap along it
    assert diffmean(positive, negative) @ unit > 0
