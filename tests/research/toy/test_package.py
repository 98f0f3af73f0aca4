"""The demo's problem sets the clients read (`clients/data`) are the toy generator's, split by split."""

from __future__ import annotations

from pathlib import Path

from clients.ab.datasets import DATA, demo_items
from research.toy.arith import problems
from research.toy.package import PROBLEM_SETS, write_problems


def test_committed_problem_sets_are_the_generators_and_disjoint(tmp_path: Path) -> None:
    write_problems(tmp_path)
    for split in PROBLEM_SETS:
        assert (tmp_path / f"demo_{split}.jsonl").read_text() == (DATA / f"demo_{split}.jsonl").read_text()
    evaluated = {item.prompt for item in demo_items(2000, "eval")}
    extracted = {item.prompt for item in demo_items(1000, "extract")}
    assert len(evaluated) == 2000 and len(extracted) == 1000 and not evaluated & extracted


def test_seed_zero_reads_the_generators_prefix_and_other_seeds_sample() -> None:
    assert [i.prompt for i in demo_items(300, "extract")] == [p.text for p in problems(0, 300, "extract")]
    sampled = demo_items(300, "extract", seed=3)
    assert len({i.prompt for i in sampled}) == 300 and sampled != demo_items(300, "extract")
