"""The table op equals the per-term formulas token by token (independent naive loop)."""

from __future__ import annotations

import torch

from steering.worker.ops import op_coefficients, steer_in_place, steering_delta


def naive(x: torch.Tensor, slot: torch.Tensor, gate: torch.Tensor, terms: dict[int, list[tuple]]) -> torch.Tensor:  # type: ignore[type-arg]
    out = x.clone()
    for i in range(x.shape[0]):
        for op, s, v, term in terms.get(int(slot[i]), []):
            if gate[i, term] == 0:
                continue
            r = v / v.norm()
            row = out[i]
            if op == "add":
                row = row + s * v
            elif op == "project":
                row = row + s * (row @ r) * r
            else:
                row = row + (s - row @ r) * r
            out[i] = row
    return out - x


def test_matches_naive_formulas_with_mixed_slots_and_gates() -> None:
    torch.manual_seed(0)
    hidden, slots, k, n, num_terms = 16, 4, 3, 40, 5
    directions = torch.zeros(slots, k, hidden)
    coefficients = torch.zeros(slots, k, 2)
    term_index = torch.zeros(slots, k, dtype=torch.int64)
    terms: dict[int, list[tuple]] = {}  # type: ignore[type-arg]
    ops = ["add", "project", "clamp"]
    for slot in range(1, slots):
        for ch in range(slot):  # slot s uses s channels
            op, s, v = ops[(slot + ch) % 3], float(ch + 1) * (-1) ** slot, torch.randn(hidden)
            directions[slot, ch] = v / v.norm()
            coefficients[slot, ch] = torch.tensor(op_coefficients(op, s, float(v.norm())))
            term_index[slot, ch] = (slot + ch) % num_terms
            terms.setdefault(slot, []).append((op, s, v, (slot + ch) % num_terms))
    x = torch.randn(n, hidden) * 3
    slot = torch.randint(0, slots, (n + 8,))
    gate = (torch.rand(n + 8, num_terms) > 0.3).float()
    delta = steering_delta(x, slot, gate, directions, coefficients, term_index)
    expected = naive(x, slot[:n], gate[:n], terms)
    assert torch.allclose(delta, expected, atol=1e-4)
    assert torch.equal(delta[slot[:n] == 0], torch.zeros_like(delta[slot[:n] == 0]))


def test_project_minus_one_removes_the_component_and_clamp_sets_it() -> None:
    torch.manual_seed(1)
    v = torch.randn(8)
    r = v / v.norm()
    x = torch.randn(5, 8)
    slot = torch.ones(5, dtype=torch.int64)
    gate = torch.ones(5, 1)
    dirs = torch.zeros(2, 1, 8)
    dirs[1, 0] = r
    idx = torch.zeros(2, 1, dtype=torch.int64)
    for op, s, expected in [("project", -1.0, 0.0), ("clamp", 2.5, 2.5)]:
        coef = torch.zeros(2, 1, 2)
        coef[1, 0] = torch.tensor(op_coefficients(op, s, float(v.norm())))
        y = x + steering_delta(x, slot, gate, dirs, coef, idx)
        assert torch.allclose(y @ r, torch.full((5,), expected), atol=1e-5)


def test_bf16_keeps_small_deltas() -> None:
    """The delta is accumulated apart from x, so a small change on a large stream is not rounded away."""
    x = torch.full((2, 64), 100.0, dtype=torch.bfloat16)
    dirs = torch.zeros(2, 1, 64, dtype=torch.bfloat16)
    dirs[1, 0, 0] = 1.0
    coef = torch.zeros(2, 1, 2)
    coef[1, 0, 0] = 0.01
    delta = steering_delta(
        x,
        torch.ones(2, dtype=torch.int64),
        torch.ones(2, 1, dtype=torch.bfloat16),
        dirs,
        coef,
        torch.zeros(2, 1, dtype=torch.int64),
    )
    assert abs(float(delta[0, 0]) - 0.01) < 1e-4


def test_eager_channel_skip_equals_all_channels_when_the_rest_are_empty() -> None:
    """`num_channels` (eager mode) drops only channels whose rows are zero: same result as all K."""
    torch.manual_seed(2)
    hidden, k = 32, 4
    directions = torch.zeros(3, k, hidden)
    directions[1:, :2] = torch.nn.functional.normalize(torch.randn(2, 2, hidden), dim=-1)
    coefficients = torch.zeros(3, k, 2)
    coefficients[1:, :2] = torch.randn(2, 2, 2)
    term_index = torch.zeros(3, k, dtype=torch.int64)
    x = torch.randn(9, hidden)
    slot = torch.randint(0, 3, (9,))
    gate = torch.ones(9, 1)
    args = (x, slot, gate, directions, coefficients, term_index)
    assert torch.allclose(steering_delta(*args, num_channels=2), steering_delta(*args), atol=1e-6)
    assert torch.equal(steering_delta(*args, num_channels=0), torch.zeros_like(x))


def test_in_place_op_reads_the_host_count_eagerly_and_compiled() -> None:
    """`steer_in_place` adds the first `count[site]` channels' delta (site value target + extra) and does
    nothing at all for a count of 0; compiled, a later count is still read on each call (not frozen)."""
    torch.manual_seed(3)
    hidden, k = 16, 3
    directions = torch.nn.functional.normalize(torch.randn(2, k, hidden), dim=-1)
    directions[0] = 0
    coefficients = torch.randn(2, k, 2)
    coefficients[0] = 0
    term_index = torch.zeros(2, k, dtype=torch.int64)
    slot = torch.tensor([1, 0, 1, 1])
    gate = torch.ones(4, 1)
    count = torch.zeros(2, dtype=torch.int64)
    target, extra = torch.randn(4, hidden), torch.randn(4, hidden)
    tables = (slot, gate, directions, coefficients, term_index)

    def steer(t: torch.Tensor, e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = t * 1.0
        steer_in_place(t, e, *tables, c, 1)
        return t

    compiled = torch.compile(steer, fullgraph=True)
    for run in (steer, compiled):
        count[1] = 0
        assert torch.equal(run(target, extra, count), target)
        count[1] = 2
        want = target + steering_delta(target + extra, *tables, num_channels=2)
        assert torch.allclose(run(target, extra, count), want, atol=1e-6)
        assert not torch.allclose(want, target)
