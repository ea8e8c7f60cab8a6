"""Final answers of math responses and their exact match.

GSM8K-style references end with ``#### <answer>``; other math data usually ends
with the answer as the last number. A model's answer is read the same way: the
first number after the last ``####`` if there is one, else the last number of
the text. Numbers are compared after normalization (``1,000`` = ``1000``,
``5.0`` = ``5``, ``$12`` = ``12``), so formatting never decides correctness.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Iterable

#: A number as written in prose: optional sign, digits with optional thousands
#: commas, an optional decimal part; or a bare decimal such as ``.5``.
NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+−]?\.\d+")
MARKER = "####"

#: A task set "looks like math" when at least this share of its references has a
#: ``####`` answer, or (without markers) this share ends its last line with a number.
MARKER_SHARE = 0.5
LAST_NUMBER_SHARE = 0.8


def normalize_number(text: str) -> str | None:
    """A canonical string of one number: no commas, no ``+``, no trailing zeros after
    the point (``"1,234.50"`` -> ``"1234.5"``, ``"-3.0"`` -> ``"-3"``); None if ``text``
    is not a number."""
    s = text.strip().replace(",", "").replace("−", "-").lstrip("+")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def _numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def extract_answer(text: str | None) -> str | None:
    """The normalized final answer of a response: the first number after the last
    ``####``, else the last number in the text; None when there is no number.

    Examples:
        ``"... #### 1,200"`` -> ``"1200"``; ``"so she has -4.50 dollars."`` -> ``"-4.5"``.
    """
    if not text:
        return None
    head, marker, tail = text.rpartition(MARKER)
    if marker:
        found = _numbers(tail)
        if found:
            return normalize_number(found[0])
    found = _numbers(text)
    return normalize_number(found[-1]) if found else None


def has_marker_answer(text: str) -> bool:
    """Whether a response states its answer GSM8K-style (``#### <number>``)."""
    _, marker, tail = text.rpartition(MARKER)
    return bool(marker) and bool(_numbers(tail))


def ends_with_number(text: str) -> bool:
    """Whether the last non-empty line of a response contains a number."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and bool(_numbers(lines[-1]))


def answer_style(references: Iterable[str]) -> str | None:
    """How a task set states answers: ``"marker"`` (``####``), ``"last_number"`` or
    None (not math: no accuracy is measured)."""
    refs = [r for r in references if isinstance(r, str)]
    if not refs:
        return None
    if sum(map(has_marker_answer, refs)) >= MARKER_SHARE * len(refs):
        return "marker"
    if sum(map(ends_with_number, refs)) >= LAST_NUMBER_SHARE * len(refs):
        return "last_number"
    return None


def usable_reference(text: str, style: str) -> bool:
    """Whether one reference has an answer under the set's ``style`` (rows without one,
    e.g. the code rows of a mixed set, are left out of the accuracy)."""
    return has_marker_answer(text) if style == "marker" else ends_with_number(text)


def exact_match(prediction: str | None, reference: str | None) -> bool:
    """Both answers present and equal after normalization (already-normalized strings
    or raw number text both work)."""
    if prediction is None or reference is None:
        return False
    p, r = normalize_number(prediction), normalize_number(reference)
    return p is not None and p == r
