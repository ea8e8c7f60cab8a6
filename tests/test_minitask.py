"""analysis.minitask: the miniature arithmetic task is reproducible, balanced, disjoint,
and every reference states the right answer in the form the accuracy check reads."""

from __future__ import annotations

import doctest
import json
import re
from collections import Counter

import pytest

import infosft.analysis.minitask as minitask
from infosft.analysis.answers import extract_answer
from infosft.app.cli import main

PROBLEM = re.compile(r"What is (\d+) ([+*]) (\d+)\?")


def test_doctests():
    assert doctest.testmod(minitask).failed == 0


def test_answers_are_right_and_readable():
    train, test = minitask.make_task(seed=3)
    for r in train + test:
        a, op, b = PROBLEM.fullmatch(r["prompt"]).groups()
        a, b = int(a), int(b)
        expected = a + b if op == "+" else a * b
        assert extract_answer(r["response"]) == str(expected)
        lo, hi = minitask.LEVELS[r["level"]][:2]
        assert lo[0] <= a <= lo[1] and hi[0] <= b <= hi[1] and op == minitask.LEVELS[r["level"]][2]
    for r in minitask.make_prior(seed=3):
        n = re.fullmatch(r"Repeat this number: (\d+)", r["prompt"]).group(1)
        assert extract_answer(r["response"]) == n


def test_splits_are_reproducible_balanced_and_disjoint():
    train, test = minitask.make_task(seed=0, n_train=400, n_test=80)
    assert (train, test) == minitask.make_task(seed=0, n_train=400, n_test=80)
    assert minitask.make_task(seed=1)[1] != test
    assert len(train) == 400 and len(test) == 80
    assert Counter(r["level"] for r in test) == {level: 20 for level in minitask.LEVELS}
    prompts = [r["prompt"] for r in train + test]
    assert len(set(prompts)) == len(prompts)  # no problem twice, none in both splits
    # the small levels run out (81 and 64 problems): their rest goes to train, whole
    levels = Counter(r["level"] for r in train)
    assert levels["add-1"] == 81 - 20 and levels["mul-1"] == 64 - 20
    prior = minitask.make_prior(seed=0, n=60)
    assert len({r["prompt"] for r in prior}) == 60


def test_cli_writes_three_sets_and_never_overwrites_unasked(tmp_path, capsys):
    out = tmp_path / "mini"
    assert main(["minitask", "--out", str(out), "--train", "40", "--test", "8",
                 "--prior", "5"]) == 0
    lines = {name: (out / name).read_text().splitlines() for name in minitask.FILES}
    assert [len(lines[n]) for n in minitask.FILES] == [40, 8, 5]
    assert all(set(json.loads(x)) == {"prompt", "response", "level"}
               for rows in lines.values() for x in rows)
    before = (out / "train.jsonl").read_text()
    assert main(["minitask", "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"infosft: error: {out / 'train.jsonl'} exists; use --overwrite to replace it"]
    assert (out / "train.jsonl").read_text() == before
    assert main(["minitask", "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert (out / "train.jsonl").read_text() != before
    with pytest.raises(Exception, match="only .* problems left"):
        minitask.write_minitask(tmp_path / "big", n_train=9000, n_test=80)


def test_a_prior_set_larger_than_its_numbers_is_refused(tmp_path):
    with pytest.raises(Exception, match=r"--prior must be in 1\.\.9900, got 9901"):
        minitask.write_minitask(tmp_path / "p", n_prior=9901)
    assert not (tmp_path / "p").exists()
