"""Synthetic multi-step arithmetic with reflection: the training and evaluation data of the toy demo model.

A problem is a chain such as ``37+48-19+26``. A trace solves it one step per ``\\n\\n``-delimited line inside
``<think>…</think>`` and ends with ``Answer: N``. The bundled model's data (the `TraceStyle` defaults):

- *Slips* happen only on hard steps — a carry (``37+48``) or a borrow (``85-19``) in the ones digit — and are
  the forgotten carry: ``37+48=75``, ``85-19=76`` (p = 0.25 per hard step, trained: the model learns to make
  them, and at the toy's temperature 0.7 it does, on a few per cent of its steps).
- After a slip the trace nearly always reflects and fixes it ("Wait, let me re-check: 37+48 = 37+40+8 = 77+8
  = 85. So it is 85, not 75."): the decomposed re-check is easier than the step, so it is reliable.
- *Correction drills* on easy steps (`p_drill_easy`): a right step shown with a wrong result, then re-checked
  and fixed. The wrong digits carry no training loss (`Trace.untrained`), so the model learns to notice and
  fix a wrong result — and cannot get by copying the written result in a re-check — without learning to write
  wrong easy steps.
- After a right step the trace re-checks redundantly with p = 0.2, and then checks once more with the inverse
  operation with p = 0.9. In the model's own traces most reflection is this redundant kind; some of it
  catches a real slip.

So fewer reflections save many tokens for little accuracy, while more reflections catch more slips. The
knobs kept for other designs (off in the bundled data): untrained drills on any step (`p_drill`), long
*reviews* of every step so far (`p_review`), *pointers* (each step line names the next operation,
``37+48=85, next -19`` … ``, done``), slips on any step by a random offset (`carry_slips=False`), a
separate re-check rate for hard steps (`p_recheck_hard`), and forgotten-carry drills on hard steps
(`p_drill_hard`). The previous bundled model used
``{"carry_slips": false, "p_error": 0.03, "p_catch": 0.85, "p_recheck": 0.15, "p_again": 0.5}``.
No torch here: the generator also serves the bundled demo set.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ERROR_OFFSETS = (-11, -10, -9, -2, -1, 1, 2, 9, 10, 11)

# The chat format of the toy (and of the tiny test models, which share its tokenizer conventions).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TraceStyle:
    """Probabilities of the synthetic trace generator (per step unless stated)."""

    min_ops: int = 3
    max_ops: int = 5
    carry_slips: bool = True  # slips only on hard steps (a carry or borrow), as the forgotten carry (off by 10)
    p_error: float = 0.25  # a (hard, if carry_slips) step's result is wrong (trained: the model slips too)
    p_catch: float = 0.99  # after a wrong step: reflect, find and fix the error
    p_recheck: float = 0.2  # after a right step: redundant re-check that confirms it
    p_again: float = 0.9  # after a redundant re-check: verify once more with the inverse operation
    p_drill_easy: float = 0.25  # with carry_slips: an easy step shown wrong (a correction drill, see below)
    p_drill_hard: float = 0.0  # with carry_slips: a hard step shown with its carry forgotten (a drill)
    # Off in the bundled model's data:
    p_drill: float = 0.0  # a right step shown wrong (its digits untrained), then re-checked and fixed
    p_review: float = 0.0  # after a redundant re-check, from the second step on: go over every step so far
    pointers: bool = False  # each step line names the next operation (", next -19") or says ", done"
    p_recheck_hard: float | None = None  # redundant re-check after a right hard step (None: p_recheck)


@dataclass(frozen=True)
class Problem:
    """One chain problem: ``start`` followed by ``(op, operand)`` steps, with its exact answer."""

    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def text(self) -> str:
        return f"{self.start}" + "".join(f"{op}{b}" for op, b in self.steps)

    @property
    def answer(self) -> int:
        value = self.start
        for op, b in self.steps:
            value = _apply(value, op, b)
        return value

    @property
    def split(self) -> str:
        """Deterministic split by content hash: 'eval' (5 %), 'extract' (5 %) or 'train'."""
        bucket = int(hashlib.sha256(self.text.encode()).hexdigest()[:8], 16) % 20
        return "eval" if bucket == 0 else "extract" if bucket == 1 else "train"


def _apply(value: int, op: str, b: int) -> int:
    return value + b if op == "+" else value - b


def random_problem(rng: random.Random, style: TraceStyle = TraceStyle()) -> Problem:
    value = rng.randint(10, 99)
    start = value
    steps: list[tuple[str, int]] = []
    for _ in range(rng.randint(style.min_ops, style.max_ops)):
        b = rng.randint(2, 99)
        op = "-" if value >= b and rng.random() < 0.5 else "+"
        steps.append((op, b))
        value = _apply(value, op, b)
    return Problem(start, tuple(steps))


def problems(seed: int, count: int, split: str | None, style: TraceStyle = TraceStyle()) -> list[Problem]:
    """`count` distinct problems of one split (None: any), reproducible from `seed`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < count:
        problem = random_problem(rng, style)
        if (split is None or problem.split == split) and problem.text not in seen:
            seen.add(problem.text)
            out.append(problem)
    return out


def decomposed(a: int, op: str, b: int) -> str:
    """The easy re-check of one step: ``85-19 = 85-10-9 = 75-9 = 66``."""
    result = _apply(a, op, b)
    tens, ones = (b // 10) * 10, b % 10
    if tens == 0 or ones == 0:
        return f"{a}{op}{b} = {result}"
    middle = _apply(a, op, tens)
    return f"{a}{op}{b} = {a}{op}{tens}{op}{ones} = {middle}{op}{ones} = {result}"


def inverse_check(a: int, op: str, b: int) -> str:
    result = _apply(a, op, b)
    inverse = "-" if op == "+" else "+"
    return f"{result}{inverse}{b} = {a}, so {a}{op}{b}={result} is right"


@dataclass(frozen=True)
class Trace:
    """A sampled solution: assistant text (without the end-of-sequence token), the answer it gives, and the
    character spans of `text` that carry no training loss (the wrong results of correction drills)."""

    text: str
    answer: int
    untrained: tuple[tuple[int, int], ...] = ()


def trace(problem: Problem, rng: random.Random, style: TraceStyle = TraceStyle()) -> Trace:
    """Sample one solution of `problem` in the style's proportions."""
    text = f"{THINK_OPEN}\n"
    untrained: list[tuple[int, int]] = []
    done: list[str] = []
    value = problem.start
    for index, (op, b) in enumerate(problem.steps):
        right = _apply(value, op, b)
        hard = is_hard(value, op, b)
        can_slip = hard or not style.carry_slips
        draw = rng.random()
        slip = can_slip and draw < style.p_error
        hard_drills = style.p_drill_hard if style.carry_slips else 0.0  # can_slip with carry_slips: a hard step
        drill = not slip and draw < (style.p_error + hard_drills if can_slip else style.p_drill_easy) + style.p_drill
        hard_drill = drill and can_slip and draw < style.p_error + hard_drills
        if style.carry_slips and (slip or hard_drill):
            written = forgot_carry(right, op)
        else:
            written = _wrong(right, rng) if slip or drill else right
        p_recheck = style.p_recheck_hard if hard and style.p_recheck_hard is not None else style.p_recheck
        step = f"{value}{op}{b}="
        if drill:
            untrained.append((len(text) + len(step), len(text) + len(step) + len(str(written))))
        text += f"{step}{written}{_pointer(problem, index) if style.pointers else ''}\n\n"
        if written != right and (drill or rng.random() < style.p_catch):
            text += f"Wait, let me re-check: {decomposed(value, op, b)}. So it is {right}, not {written}.\n\n"
            written = right
        elif written == right and rng.random() < p_recheck:
            text += f"Wait, let me re-check: {decomposed(value, op, b)}. Yes, it is {right}.\n\n"
            if rng.random() < style.p_again:
                text += f"Wait, let me check again: {inverse_check(value, op, b)}.\n\n"
            if style.p_review and done and rng.random() < style.p_review:
                steps = ", ".join([*done, f"{step}{right}"])
                text += f"Wait, let me go over all the steps again: {steps}. All of them are right.\n\n"
        done.append(f"{step}{written}")
        value = written
    return Trace(f"{text}{THINK_CLOSE}\nAnswer: {value}", value, tuple(untrained))


def is_hard(a: int, op: str, b: int) -> bool:
    """Whether a step carries (``+``) or borrows (``-``) in the ones digit."""
    return (a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10)


def forgot_carry(right: int, op: str) -> int:
    """The result of a hard step with its carry or borrow forgotten: 37+48 -> 75, 85-19 -> 76."""
    return right - 10 if op == "+" else right + 10


def _pointer(problem: Problem, index: int) -> str:
    """What a step line with a pointer says comes next: ``, next -19``, or ``, done`` after the last step."""
    if index + 1 == len(problem.steps):
        return ", done"
    op, b = problem.steps[index + 1]
    return f", next {op}{b}"


def _wrong(right: int, rng: random.Random) -> int:
    return rng.choice([right + d for d in ERROR_OFFSETS if right + d >= 0])
