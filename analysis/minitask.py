"""A miniature arithmetic task the default model can learn on a CPU in minutes.

GSM8K is out of reach of a 135M model (0% before and after a short fine-tune), so it
cannot show whether a weighting scheme learns more or forgets less. This task can:
the default model (SmolLM2-135M-Instruct, greedy) answers some of it, unevenly across
four graded levels, and a short LoRA run teaches it the short answer format and
moves accuracy. Every answer is verifiable (a ``#### N`` marker, read by
:mod:`analysis.answers`).

Levels, in order of difficulty (problems with operands drawn uniformly):

==========  ==========================  ==========================
level       problem                     example
==========  ==========================  ==========================
``add-1``   one-digit + one-digit       ``What is 7 + 5?``
``mul-1``   one-digit x one-digit       ``What is 6 * 4?``
``add-21``  two-digit + one-digit       ``What is 47 + 8?``
``add-2``   two-digit + two-digit       ``What is 47 + 25?``
==========  ==========================  ==========================

Beside it, a prior-capability set the base model gets right (repeating a number back,
``Repeat this number: 4821``), so that forgetting shows as answers lost.

The data is generated here from a seed (no third-party data; it is covered by the
project's license). The same seed gives the same files on every machine: Python's
``random.Random`` is specified to be reproducible across platforms and versions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from infosft.atomic import atomic_write_text
from infosft.errors import InfosftError

#: level -> (operand ranges, operator)
LEVELS: dict[str, tuple[tuple[int, int], tuple[int, int], str]] = {
    "add-1": ((1, 9), (1, 9), "+"),
    "mul-1": ((2, 9), (2, 9), "*"),
    "add-21": ((10, 99), (1, 9), "+"),
    "add-2": ((10, 99), (10, 99), "+"),
}
_APPLY: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b,
                                                 "*": lambda a, b: a * b}


def problem(level: str, a: int, b: int) -> dict[str, str]:
    """One task record: prompt, worked response ending in ``#### answer``, level.

    >>> problem("add-2", 47, 25)
    {'prompt': 'What is 47 + 25?', 'response': '47 + 25 = 72\\n#### 72', 'level': 'add-2'}
    """
    op = LEVELS[level][2]
    answer = _APPLY[op](a, b)
    return {"prompt": f"What is {a} {op} {b}?", "response": f"{a} {op} {b} = {answer}\n#### {answer}",
            "level": level}


def prior_problem(n: int) -> dict[str, str]:
    """One prior-capability record.

    >>> prior_problem(4821)
    {'prompt': 'Repeat this number: 4821', 'response': '4821\\n#### 4821', 'level': 'repeat'}
    """
    return {"prompt": f"Repeat this number: {n}", "response": f"{n}\n#### {n}", "level": "repeat"}


def _pairs(level: str, rng: random.Random) -> list[tuple[int, int]]:
    """Every operand pair of a level, shuffled."""
    (lo1, hi1), (lo2, hi2), _ = LEVELS[level]
    pairs = [(a, b) for a in range(lo1, hi1 + 1) for b in range(lo2, hi2 + 1)]
    rng.shuffle(pairs)
    return pairs


def make_task(seed: int = 0, n_train: int = 400, n_test: int = 80
              ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and test records, each split evenly over the levels (in level order, then
    shuffled), with no problem in both.

    ``add-1`` has 81 distinct problems, ``mul-1`` 64: a split asking for more of a level
    than it has left gets them all (the train split is topped up from the harder levels).

    >>> train, test = make_task(seed=0, n_train=40, n_test=8)
    >>> len(train), len(test), sorted({r["level"] for r in test})
    (40, 8, ['add-1', 'add-2', 'add-21', 'mul-1'])
    >>> not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    True
    """
    rng = random.Random(seed)
    pools = {level: _pairs(level, rng) for level in LEVELS}
    test = _take(pools, n_test)
    train = _take(pools, n_train)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def _take(pools: dict[str, list[tuple[int, int]]], n: int) -> list[dict[str, str]]:
    """``n`` problems, as evenly over the levels as the pools allow; taken off the pools."""
    out: list[dict[str, str]] = []
    levels = list(pools)
    while len(out) < n and any(pools.values()):
        for level in levels:
            if len(out) < n and pools[level]:
                out.append(problem(level, *pools[level].pop()))
    return out


def make_prior(seed: int = 0, n: int = 60) -> list[dict[str, str]]:
    """``n`` prior-capability records with distinct 3- and 4-digit numbers.

    >>> [r["prompt"] for r in make_prior(seed=1, n=2)] == [r["prompt"] for r in make_prior(1, 2)]
    True
    """
    rng = random.Random(f"prior-{seed}")
    return [prior_problem(x) for x in rng.sample(range(100, 100 + PRIOR_NUMBERS), n)]


FILES = ("train.jsonl", "test.jsonl", "prior.jsonl")
PRIOR_NUMBERS = 9900  # the distinct 3- and 4-digit numbers a prior item can repeat


def write_minitask(out: str | Path, *, seed: int = 0, n_train: int = 400, n_test: int = 80,
                   n_prior: int = 60, overwrite: bool = False) -> list[Path]:
    """``OUT/train.jsonl``, ``OUT/test.jsonl`` and ``OUT/prior.jsonl`` (prompt/response
    records with their ``level``); refuses files that exist unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InfosftError(f"{out}: exists and is not a directory")
    paths = [out / name for name in FILES]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise InfosftError(f"{existing[0]} exists; use --overwrite to replace it")
    for n, name, most in ((n_train, "--train", None), (n_test, "--test", None),
                          (n_prior, "--prior", PRIOR_NUMBERS)):
        if n < 1 or (most is not None and n > most):
            raise InfosftError(f"{name} must be in 1..{most or 'N'}, got {n}")
    train, test = make_task(seed, n_train, n_test)
    if len(train) < n_train:
        raise InfosftError(f"--train {n_train}: the task has only {len(train)} problems left "
                           f"after --test {n_test}")
    sets = (train, test, make_prior(seed, n_prior))
    out.mkdir(parents=True, exist_ok=True)
    for path, rows in zip(paths, sets):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return paths
