"""Final-answer extraction, normalization and exact match (``analysis.answers``), and the
pure helpers of the accuracy step (``analysis.accuracy``)."""

from __future__ import annotations

import polars as pl
import pytest

from infosft.analysis.accuracy import accuracy_summary, last_turn_start, with_answers
from infosft.analysis.answers import (answer_style, ends_with_number, exact_match, extract_answer,
                              has_marker_answer, normalize_number, usable_reference)


@pytest.mark.parametrize("text, want", [
    ("She pays 16 + 8 = 24 dollars.\n#### 24", "24"),
    ("#### 1,200", "1200"),
    ("so 3 + 4 = 7\n####  -15 apples", "-15"),
    ("The answer is 3.50 dollars.", "3.5"),
    ("He has 12 left, then 7.0 more", "7"),
    ("#### 5 and then the model rambles 9 10 11", "5"),       # first number after ####
    ("#### none here, but earlier 4", "4"),                     # no number after the marker
    ("It drops to -4 degrees.", "-4"),
    ("A total of 1,234,567 stars.", "1234567"),
    ("a fraction .5 of it", "0.5"),
    ("no number at all", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize("text, want", [
    ("1,000", "1000"), ("5.0", "5"), ("5.50", "5.5"), ("+3", "3"), ("-0", "0"),
    ("0.0", "0"), ("100", "100"), ("−7", "-7"), ("abc", None), ("", None),
])
def test_normalize_number(text, want):
    assert normalize_number(text) == want


def test_exact_match():
    assert exact_match("18", "18")
    assert exact_match("1,800", "1800.0")
    assert exact_match(extract_answer("so it costs $1,800.00 in all."), "1800")
    assert not exact_match("18", "19")
    assert not exact_match(None, "18")
    assert not exact_match("18", None)
    assert not exact_match(None, None)


def test_answer_style_of_a_set():
    math = ["a\n#### 3", "b\n#### 4", "c\n#### 5"]
    code = ["Use this:\n```python\ndef f(x):\n    return x\n```"]
    assert answer_style(math) == "marker"
    assert answer_style(math * 2 + code) == "marker"        # a mixed math + code set
    assert answer_style(["So the answer is 12.", "It is 7 km."]) == "last_number"
    assert answer_style(["Paris is the capital.", "Hello there!"]) is None
    assert answer_style(code) is None
    assert answer_style([]) is None
    assert has_marker_answer("x #### 2") and not has_marker_answer("#### none")
    assert ends_with_number("step 1\nthe answer is 4.\n") and not ends_with_number("4\nok")
    assert usable_reference("#### 2", "marker") and not usable_reference(code[0], "marker")


def test_last_turn_start():
    assert last_turn_start([False, True, True, False]) == 1
    assert last_turn_start([False, True, False, False, True, True]) == 4
    assert last_turn_start([False, False]) is None


def test_exact_match_on_a_tiny_case():
    items = pl.DataFrame({"example_id": [0, 1, 2], "reference": ["24", "1200", "-3"]})
    out = with_answers(items, ["so 24 in total", "#### 1,200", "I am not sure"], "base")
    out = with_answers(out, ["#### 25", "1200.0", "-3"], "tuned")
    assert out["base_answer"].to_list() == ["24", "1200", None]
    assert out["base_correct"].to_list() == [True, True, False]
    assert out["tuned_correct"].to_list() == [False, True, True]
    s = accuracy_summary(out)
    assert s == {"n": 3, "base": pytest.approx(2 / 3), "tuned": pytest.approx(2 / 3),
                 "delta": pytest.approx(0.0), "gained": 1, "lost": 1}
    assert accuracy_summary(out.head(0))["base"] is None
