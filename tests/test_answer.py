"""The reply parsers never crash, read what a model may reasonably write, and refuse the rest."""

import pytest
from conftest import make_small
from hypothesis import given, settings
from hypothesis import strategies as st

from g1core.gym import answer

GAMES_AND_SIZES = [("2048", 4), ("shisen-sho", 6), ("swap", 8)]


@pytest.mark.parametrize(
    "reply, expect",
    [
        ("<answer>(0, 1) (2, 3)</answer>", (0, 1, 2, 3)),
        ("<answer>(0,1)(2,3)</answer>", (0, 1, 2, 3)),
        ("<answer> (0, 1), (2, 3) </answer>", (0, 1, 2, 3)),
        ("<answer>\n( 5 ,  5 ) ,( 0 , 0 )\n</answer>", (5, 5, 0, 0)),
        ("(0, 1) (2, 3)", (0, 1, 2, 3)),  # a bare reply without any tags
        ("<perception>x</perception><think>(9, 9)?</think><answer>(1, 1) (1, 2)</answer>", (1, 1, 1, 2)),
        ("<answer>I pick (0, 1) and (2, 3).</answer>", (0, 1, 2, 3)),
        ("<answer>(0, 1)</answer>", None),
        ("<answer>(0, 1) (2, 3) (4, 5)</answer>", None),
        ("<answer>(0, 6) (2, 3)</answer>", None),  # off the 6x6 board
        ("<answer>(-1, 0) (2, 3)</answer>", None),
        ("<answer>(\u0660, \u0661) (\u0662, \u0663)</answer>", None),
        ("<think>(0, 1) (2, 3)</think>", None),  # tags but no answer block
        ("<answer>(0, 1) (2, 3)", None),  # unclosed
        ("", None),
    ],
)
def test_cell_pairs(reply, expect):
    assert answer.parse_cell_pair(reply, 6, 6) == expect


@pytest.mark.parametrize(
    "reply, expect",
    [
        ("<answer>2</answer>", 2),
        ("<answer> 0 </answer>", 0),
        ("<answer>Action: 3</answer>", 3),
        ("<answer>left</answer>", 3),
        ("<answer>Up</answer>", 0),
        ("1", 1),
        ("<answer>5</answer>", None),
        ("<answer>-1</answer>", None),
        ("<answer>1 or 2</answer>", None),
        ("<answer>up or down</answer>", None),
        ("<answer>2.5</answer>", None),
        ("<answer>2.</answer>", 2),
        ("<answer>Action 1.</answer>", 1),
        ("<answer>\u0663</answer>", None),  # only ASCII digits
        ("<answer>99999999999999999999999</answer>", None),
        ("<answer></answer>", None),
    ],
)
def test_2048_choice(reply, expect):
    assert make_small("2048").parse_action(reply) == expect


def test_well_formed():
    good = "<perception>\n 2 | - \n</perception>\n<think>t</think>\n<answer>1</answer>"
    assert answer.is_well_formed(good)
    assert answer.is_well_formed("  " + good + "\n")
    assert not answer.is_well_formed("<think>t</think><perception>p</perception><answer>1</answer>")
    assert not answer.is_well_formed("<perception>p</perception><answer>1</answer>")
    assert answer.is_well_formed("Sure. " + good + " Done.")  # text outside the blocks is allowed
    assert not answer.is_well_formed("<answer>0</answer>" + good)
    assert not answer.is_well_formed(good + good)
    assert not answer.is_well_formed(
        "<perception>p<think>t</think></perception><think>t</think><answer>1</answer>"
    )


def test_perception_checks():
    truth = " 2 | - \n - | 4 "
    reply = answer.compose(truth, "t", "1")
    assert answer.perception_exact(reply, truth) and answer.perception_matches(reply, truth)
    assert answer.perception_matches(answer.compose(truth + "\n(extra)", "t", "1"), truth)
    assert not answer.perception_exact(answer.compose(truth + "\n(extra)", "t", "1"), truth)
    assert not answer.perception_matches("<answer>1</answer> " + truth, truth)  # must be in the block


def test_perception_cell_accuracy_counts_cells_in_place():
    truth = " 2 | - \n - | 4 "
    cells = answer.perception_cell_accuracy
    assert cells(answer.compose(truth, "t", "1"), truth) == 1.0
    assert cells(answer.compose("2|-\n-|8", "t", "1"), truth) == 0.75  # spacing ignored, one cell wrong
    assert cells(answer.compose(" - | 2 | - \n - | 4 ", "t", "1"), truth) == 0.5  # a shifted row is wrong
    assert cells(answer.compose(" 2 | - ", "t", "1"), truth) == 0.5  # missing row
    assert cells("<answer>1</answer>", truth) == 0.0


def test_format_check_is_fast_on_long_repetitive_replies():
    import time

    looping = answer.compose(" 2 | - ", "t", "0") * 400 + "<perception>"
    start = time.perf_counter()
    assert not answer.is_well_formed(looping)
    assert not answer.is_well_formed("<perception>" + "</perception><think></think><answer>" * 800)
    assert time.perf_counter() - start < 0.5  # was cubic: ~26 s for the second reply


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_parsers_never_crash_on_garbage(text):
    for name, _ in GAMES_AND_SIZES:
        env = make_small(name)
        action = env.parse_action(text)
        assert action is None or env.action_space.contains(
            action if name == "2048" else __import__("numpy").array(action)
        )
    answer.is_well_formed(text)


fragments = st.sampled_from(
    [
        "<answer>",
        "</answer>",
        "<think>",
        "</think>",
        "<perception>",
        "</perception>",
        "(",
        ")",
        ",",
        " ",
        "\n",
        "0",
        "1",
        "3",
        "7",
        "12",
        "-",
        "up",
        "left",
        "x",
        "99999999999",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(fragments, max_size=40).map("".join))
def test_parsers_on_tag_and_number_soup(text):
    for name, size in GAMES_AND_SIZES:
        env = make_small(name)
        action = env.parse_action(text)
        if action is not None and name != "2048":
            assert all(0 <= v < size for v in action)
        if action is not None and name == "2048":
            assert 0 <= action <= 4


@settings(max_examples=200, deadline=None)
@given(
    st.tuples(*[st.integers(0, 5)] * 4),
    st.sampled_from(["", " ", "  ", "\n"]),
    st.sampled_from([" ", ", ", ",", " , ", "\n", ""]),
    st.text(alphabet="abc .:!", max_size=10),
)
def test_valid_pairs_parse_with_free_spacing_and_extra_text(cells, pad, between, extra):
    r1, c1, r2, c2 = cells
    reply = f"<answer>{extra}{pad}({pad}{r1}{pad},{pad}{c1}{pad}){between}({r2},{pad}{c2}){pad}</answer>"
    assert answer.parse_cell_pair(reply, 6, 6) == cells
