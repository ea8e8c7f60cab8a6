"""The scheme registry (infosft.schemes): declarations, the new schemes against their
reference formulas written out here, and a user's ``module:function`` scheme.

Expected values never come from infosft: EAFT's weight is LLaMA-Factory's
``_eaft_cross_entropy`` (top 20 logits, softmax over them, entropy, ``(H / 3) ** alpha``)
in numpy; the excess-loss selection is a plain Python ranking.
"""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from infosft import schemes
from infosft.schemes.eaft import top_entropy
from infosft.weights import Q_SCHEMES, SCHEMES, resolve_knobs, token_weights


def test_builtins_are_declared_in_display_order_with_their_knobs():
    assert SCHEMES == ("sft", "dft", "infosft", "profit", "eaft", "excess")
    assert Q_SCHEMES == ("sft", "dft", "infosft", "profit")
    knobs = {s: schemes.get(s).knob_names for s in SCHEMES}
    assert knobs == {"sft": (), "dft": (), "infosft": ("C", "P"),
                     "profit": ("threshold", "direction", "seed"), "eaft": ("alpha",),
                     "excess": ("keep", "per")}
    assert schemes.get("eaft").extra_fields == ("entropy_top20",)
    assert schemes.get("excess").extra_fields == ("logp_ref",)
    assert not schemes.get("excess").per_token and not schemes.get("eaft").q_only
    for s in SCHEMES:
        sch = schemes.get(s)
        assert sch.label and sch.formula.startswith("w = ") and sch.citation


def test_defaults_and_ranges_come_from_the_declarations():
    assert resolve_knobs("eaft") == {"alpha": 1.0}
    assert resolve_knobs("excess") == {"keep": 0.6, "per": "all"}
    assert resolve_knobs("excess", keep=1, per="example", C=2.0) == {"keep": 1.0,
                                                                      "per": "example"}
    for bad, msg in [({"keep": 0.0}, r"keep must be in \(0, 1\]"),
                     ({"keep": 1.5}, "keep must be"), ({"per": "batch"}, "per must be one of"),
                     ({"keep": "half"}, "keep must be a number")]:
        with pytest.raises(ValueError, match=msg):
            resolve_knobs("excess", **bad)
    with pytest.raises(ValueError, match="alpha must be in"):
        resolve_knobs("eaft", alpha=-1)
    # (a name no scheme declares: a user scheme loaded by another test may own "gamma")
    with pytest.raises(ValueError, match="unknown knob 'no_such_knob'"):
        resolve_knobs("eaft", no_such_knob=1)
    with pytest.raises(ValueError, match="unknown scheme 'rho'"):
        resolve_knobs("rho")


def _eaft_reference(logits: np.ndarray, alpha: float) -> np.ndarray:
    """LLaMA-Factory's EAFT weight, in float64 numpy."""
    top = -np.sort(-logits, axis=-1)[:, :20]
    logq = top - top.max(-1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
    h = -(np.exp(logq) * logq).sum(-1)
    return (h / 3.0) ** alpha


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_eaft_matches_the_reference_formula(alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g) * torch.linspace(0.1, 8, 64)[:, None]
    logits[0, :] = 0.0  # uniform: H = ln 20, the largest weight
    targets = torch.randint(0, 300, (64,), generator=g)
    logp = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    w = token_weights(logp, "eaft", fields={"entropy_top20": top_entropy(logits)}, alpha=alpha)
    ref = _eaft_reference(logits.double().numpy(), alpha)
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert abs(ref[0] - (math.log(20) / 3) ** alpha) < 1e-9


def test_eaft_needs_the_entropy_field():
    with pytest.raises(ValueError, match="needs each token's entropy_top20"):
        token_weights(torch.zeros(3), "eaft")


def _excess_reference(excess, example, keep, per):
    n = len(excess)
    groups = [list(range(n))] if per == "all" else [
        [i for i in range(n) if example[i] == e] for e in sorted(set(example))]
    w = [0.0] * n
    for idx in groups:
        ranked = sorted(idx, key=lambda i: (-excess[i], i))  # ties: by position
        for i in ranked[:math.ceil(keep * len(idx) - 1e-9)]:
            w[i] = 1.0
    return w


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.6, 1.0])
@pytest.mark.parametrize("per", ["all", "example"])
def test_excess_keeps_the_largest_excess_share(keep, per):
    rng = np.random.default_rng(1)
    n = 97
    logp = np.log(rng.uniform(1e-4, 1, n)).round(1)   # rounded: ties happen
    ref = np.log(rng.uniform(1e-4, 1, n)).round(1)
    example = np.sort(rng.integers(0, 7, n))
    w = token_weights(torch.tensor(logp), "excess",
                      fields={"logp_ref": torch.tensor(ref), "example": torch.tensor(example)},
                      keep=keep, per=per)
    # in float32, as token_weights reads them: the ranking is of the same numbers
    excess = (ref.astype(np.float32) - logp.astype(np.float32)).tolist()
    assert w.tolist() == _excess_reference(excess, example.tolist(), keep, per)


def test_excess_keeps_shape_and_never_keeps_missing_values():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, float("nan")]])
    ref = torch.zeros(2, 2)
    w = token_weights(logp.nan_to_num(nan=0.0).where(~logp.isnan(), torch.tensor(float("nan"))),
                      "excess", fields={"logp_ref": ref}, keep=1.0)
    assert w.shape == (2, 2)
    assert w.tolist() == [[1.0, 1.0], [1.0, 0.0]]


USER_MODULE = '''
import torch

def focal(logp, gamma=2.0):
    """w = (1 - q) ^ gamma"""
    return (1 - logp.exp()) ** gamma

def sure(logp, entropy_top20, floor=0.0):
    return torch.clamp(1 - entropy_top20 / 3, min=floor)

def negative(logp):
    return -logp.exp()

def wrong_shape(logp):
    return logp.sum()

def no_logp(entropy_top20):
    return entropy_top20

def odd_param(logp, table):
    return logp

def boom(logp):
    raise RuntimeError("kaput")

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of user schemes in the working directory (as a user's own file is)."""
    name = f"my_schemes_{abs(hash(str(tmp_path))) % 10 ** 8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)
    for spec in [s for s in schemes.names() if s.startswith(name)]:
        schemes.base._REGISTRY.pop(spec)


def test_a_user_function_becomes_a_scheme_with_its_knobs_and_fields(user_module):
    spec = f"{user_module}:focal"
    s = schemes.get(spec)
    assert (s.name, s.knob_names, s.needs, s.formula) == (spec, ("gamma",), ("logp",),
                                                          "w = (1 - q) ^ gamma")
    assert s.q_only
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    w = token_weights(q.log(), spec, gamma=3)
    np.testing.assert_allclose(w.numpy(), [(1 - x) ** 3 for x in q.tolist()], rtol=1e-6)
    assert resolve_knobs(spec) == {"gamma": 2.0}
    with pytest.raises(ValueError, match="gamma must be a number"):
        resolve_knobs(spec, gamma="x")
    sure = schemes.get(f"{user_module}:sure")
    assert sure.needs == ("logp", "entropy_top20") and sure.knob_names == ("floor",)
    w = token_weights(torch.zeros(3), f"{user_module}:sure",
                      fields={"entropy_top20": torch.tensor([0.0, 1.5, 3.0])}, floor=0.1)
    np.testing.assert_allclose(w.numpy(), [1.0, 0.5, 0.1], rtol=1e-6)


@pytest.mark.parametrize("attr, message", [
    ("negative", "weights must be finite and >= 0"),
    ("wrong_shape", "must return a tensor shaped like logp"),
    ("no_logp", "must take logp"),
    ("odd_param", "parameter 'table' is neither a field"),
    ("boom", "fails on a probe .*RuntimeError: kaput"),
    ("NOT_A_FUNCTION", "is a int, not a function"),
    ("missing", "cannot load it .*AttributeError"),
])
def test_a_bad_user_scheme_is_refused_on_load_with_one_line(user_module, attr, message):
    with pytest.raises(ValueError, match=message) as e:
        schemes.get(f"{user_module}:{attr}")
    assert "\n" not in str(e.value)
    assert f"{user_module}:{attr}" not in schemes.names()


@pytest.mark.parametrize("spec", ["no_such_module_xyz:f", "a b:c", "mod:", ":f"])
def test_a_bad_scheme_name_is_one_line(spec):
    with pytest.raises(ValueError) as e:
        schemes.get(spec)
    assert "\n" not in str(e.value) and spec in str(e.value)


def test_a_builtin_cannot_be_replaced():
    with pytest.raises(ValueError, match="already registered"):
        schemes.register(schemes.Scheme("sft", "x", "w = 2", "", lambda f: f["logp"] * 0 + 2))


def test_doctests_of_knob_plumbing():
    import doctest

    from infosft import train_config

    assert doctest.testmod(train_config).failed == 0


def test_sweep_points_of_new_schemes_become_run_configs(tmp_path):
    """A grid point's knobs land where TrainConfig keeps them: the flat fields, or
    ``knobs`` for the others; a point leaves every other knob at its default."""
    from infosft.analysis.sweep import parse_point, run_config
    from infosft.train_config import resolve

    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    base = resolve({"data": str(tmp_path / "d.jsonl"), "out": str(tmp_path / "x"), "C": 3.0,
                    "knobs": None, "reference": str(tmp_path)})
    scheme, knobs = parse_point("excess:keep=0.3,per=example")
    cfg = run_config(base, tmp_path / "r", scheme, knobs, 2)
    assert (cfg.scheme, cfg.knobs, cfg.C, cfg.seed) == ("excess", {"keep": 0.3,
                                                                    "per": "example"}, None, 2)
    assert cfg.resolved_knobs() == {"keep": 0.3, "per": "example"}
    scheme, knobs = parse_point("infosft:P=0.8")
    cfg = run_config(base, tmp_path / "r", scheme, knobs, 0)
    assert (cfg.P, cfg.C, cfg.knobs) == (0.8, None, None)


def test_the_apps_train_form_puts_new_knobs_under_knobs(tmp_path):
    """The Train page's values (Settings.knobs of the chosen scheme) become a config the
    trainer accepts: EAFT's alpha under ``knobs``, InfoSFT's C flat."""
    from infosft.app import jobs

    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    cfg = jobs.train_config(str(tmp_path / "d.jsonl"), tmp_path / "run", scheme="eaft",
                            knobs={"alpha": 0.5})
    assert (cfg.knobs, cfg.resolved_knobs()) == ({"alpha": 0.5}, {"alpha": 0.5})
    cfg = jobs.train_config(str(tmp_path / "d.jsonl"), tmp_path / "run", scheme="infosft",
                            knobs={"C": 2.0})
    assert (cfg.C, cfg.knobs) == (2.0, None)


def test_excess_doctests():
    """``on_counts`` over a histogram, over the run and within each example's rank bins."""
    import doctest

    from infosft.schemes import excess

    result = doctest.testmod(excess)
    assert result.attempted >= 4 and result.failed == 0
