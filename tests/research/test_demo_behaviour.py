"""The step-level trace parser of research/demo_behaviour.py counts what the traces say."""

from __future__ import annotations

from research.demo_behaviour import Tally
from research.toy.arith import Problem

PROBLEM = Problem(37, (("+", 48), ("-", 19)))  # 37+48=85, 85-19=66


def test_counts_slips_fixes_breaks_and_redundant_checks() -> None:
    tally = Tally()
    # a wrong step caught and fixed, then a right step
    tally.add_trace(
        PROBLEM,
        "<think>\n37+48=86\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 85. So it is 85, not 86.\n\n"
        "85-19=66\n\n</think>\nAnswer: 66",
    )
    # a right step "corrected" into a wrong one: a break
    tally.add_trace(
        PROBLEM,
        "<think>\n37+48=85\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 84. So it is 84, not 85.\n\n"
        "84-19=65\n\n</think>\nAnswer: 65",
    )
    # a redundant re-check with a second check, then an uncaught slip
    tally.add_trace(
        PROBLEM,
        "<think>\n37+48=85\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 85. Yes, it is 85.\n\n"
        "Wait, let me check again: 85-48 = 37, so 37+48=85 is right.\n\n85-19=67\n\n</think>\nAnswer: 67",
    )
    tally.add_trace(PROBLEM, "<think>\n37+48=85\n\n85-19=66\n\n</think>\nAnswer: 66")
    s = tally.summary()
    assert s["responses"] == 4 and s["accuracy"] == 0.5 and s["reflection_rate"] == 0.75
    assert s["step_error_rate"] == round(2 / 8, 4)  # 37+48=86 and 85-19=67; 84-19=65 is right arithmetic
    assert s["p_reflect_after_wrong"] == 0.5 and s["p_fix_given_recheck_of_wrong"] == 1.0
    assert s["p_reflect_after_right"] == round(2 / 6, 4) and s["p_break_given_recheck_of_right"] == 0.5
    assert s["p_again_after_right_recheck"] == 0.5 and s["unparsed_lines"] == 0
    # every reflection above follows the first of two steps
    assert s["p_reflect_after_last_step"] == 0.0 and s["p_reflect_after_other_steps"] == 0.75
    assert (s["wrong_steps"], s["rechecks_of_wrong"], s["rechecks_of_right"]) == (2, 1, 2)


def test_counts_steps_that_do_not_start_from_the_value_so_far() -> None:
    tally = Tally()
    # the fix says 85, but the next step starts from 86; the answer copies a value the trace never held
    tally.add_trace(
        PROBLEM,
        "<think>\n37+48=86\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 85. So it is 85, not 86.\n\n"
        "86-19=67\n\n</think>\nAnswer: 76",
    )
    s = tally.summary()
    assert s["carry_error_rate"] == 0.5 and s["answer_copy_errors"] == 1 and s["accuracy"] == 0.0
    assert s["lost_place_rate"] == 0.0


def test_counts_responses_that_lose_their_place_in_the_chain() -> None:
    tally = Tally()
    tally.add_trace(PROBLEM, "<think>\n37+48=85\n\n</think>\nAnswer: 85")  # skipped -19
    tally.add_trace(PROBLEM, "<think>\n37+48=85\n\n85-91=-6\n\n</think>\nAnswer: 6")  # misread 19
    tally.add_trace(PROBLEM, "<think>\n37+48=85\n\n85-19=66\n\n</think>\nAnswer: 66")
    assert tally.summary()["lost_place_rate"] == round(2 / 3, 4)


def test_reads_step_lines_that_point_to_the_next_operation() -> None:
    tally = Tally()
    tally.add_trace(
        PROBLEM,
        "<think>\n37+48=85, next -19\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 85. Yes, it is 85.\n\n"
        "Wait, let me go over all the steps again: 37+48=85. All of them are right.\n\n"
        "85-19=66, done\n\n</think>\nAnswer: 66",
    )
    tally.add_trace(
        PROBLEM, "<think>\n37+48=85, next -19\n\n85-19=66, next +2\n\n66+2=68, done\n\n</think>\nAnswer: 68", 30
    )
    s = tally.summary()
    assert s["mean_tokens"] == 15
    assert s["accuracy"] == 0.5 and s["reflection_rate"] == 0.5 and s["unparsed_lines"] == 0
    assert s["p_reflect_after_right"] == round(1 / 5, 4) and s["lost_place_rate"] == 0.5  # a step too many
