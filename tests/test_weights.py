"""Tests of infosft.weights against values computed independently with `math`.

Expected values never come from infosft.weights: they are written out from the
formulas in DESIGN.md ("Weighting schemes (exact)"):

    sft: 1    dft: q    infosft: q * max(0, 1 - logit(q) / C), C = log(P / (1 - P))
    profit: 1 where kept, 0 where dropped

Weights are float32, so comparisons with the float64 references use ~1e-5
tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infosft.weights import (
    c_from_p,
    p_from_c,
    resolve_knobs,
    token_weights,
    weight_curve,
)

P_DEFAULT = 0.93
C_DEFAULT = math.log(0.93 / 0.07)  # ~2.5867, written out, not taken from the module
QS = [0.05, 0.1, 0.3, 0.5, 0.57, 0.8, 0.9, 0.93, 0.99]
INF = math.inf

# Every scheme with its default knobs, plus each ProFit direction.
ALL_SCHEMES = [
    ("sft", {}),
    ("dft", {}),
    ("infosft", {}),
    ("infosft", {"C": 1.0}),
    ("profit", {}),
    ("profit", {"direction": "lower"}),
    ("profit", {"direction": "middle"}),
    ("profit", {"direction": "random", "threshold": 0.5}),
]
SCHEME_IDS = [f"{s}-{k}" if k else s for s, k in ALL_SCHEMES]

hyp = settings(deadline=None, max_examples=200)


# ---------------------------------------------------------------- references

def logit(q: float) -> float:
    return math.log(q / (1 - q))


def infosft_ref(q: float, C: float) -> float:
    """q * max(0, 1 - logit(q) / C), with the limits at q = 0 and q = 1 (both 0)."""
    if q <= 0 or q >= 1:
        return 0.0
    return q * max(0.0, 1 - logit(q) / C)


def weights_of_q(qs, scheme: str, **knobs) -> torch.Tensor:
    """token_weights at logp = log(q), q given as float64 probabilities."""
    logp = torch.log(torch.tensor(qs, dtype=torch.float64))
    return token_weights(logp, scheme, **knobs)


def one_weight(logp: float, scheme: str, **knobs) -> float:
    return token_weights(torch.tensor(logp, dtype=torch.float64), scheme, **knobs).item()


def log_or_neg_inf(q: float) -> float:
    return math.log(q) if q > 0 else -INF


def close(got: float, expected: float, abs_tol: float = 1e-5, rel_tol: float = 1e-4) -> bool:
    return abs(got - expected) <= abs_tol + rel_tol * abs(expected)


# ---------------------------------------------------------------- hand-computed values

def test_sft_is_one():
    assert weights_of_q(QS, "sft").tolist() == [1.0] * len(QS)


def test_dft_is_q():
    assert weights_of_q(QS, "dft").tolist() == pytest.approx(QS, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    "knobs, C",
    [({}, C_DEFAULT), ({"P": 0.93}, C_DEFAULT), ({"C": 1.0}, 1.0),
     ({"C": 2.0}, 2.0), ({"C": 4.0}, 4.0), ({"P": 0.8}, math.log(0.8 / 0.2))],
    ids=["default", "P=0.93", "C=1", "C=2", "C=4", "P=0.8"],
)
def test_infosft_hand_values(knobs, C):
    expected = [infosft_ref(q, C) for q in QS]
    got = weights_of_q(QS, "infosft", **knobs).tolist()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_infosft_known_points():
    # logit(0.5) = 0, so w(0.5) = 0.5 for every C; w(P) = 0 at the default P.
    assert weights_of_q([0.5], "infosft", C=3.0).item() == pytest.approx(0.5, abs=1e-6)
    assert weights_of_q([0.5], "infosft").item() == pytest.approx(0.5, abs=1e-6)
    assert weights_of_q([0.93], "infosft").item() == pytest.approx(0.0, abs=1e-6)


def test_weight_curve_matches_formula():
    q = torch.tensor([0.0] + QS + [1.0], dtype=torch.float64)
    got = weight_curve(q, "infosft")
    assert got.dtype == torch.float32 and got.shape == q.shape
    expected = [infosft_ref(x, C_DEFAULT) for x in q.tolist()]
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert weight_curve(q, "dft").tolist() == pytest.approx(q.tolist(), rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------- InfoSFT properties

@pytest.mark.parametrize("q", [0.95, 0.97, 0.999, 1.0])
def test_infosft_zero_above_default_p(q):
    assert weights_of_q([q], "infosft").item() == 0.0


@pytest.mark.parametrize("C", [1.0, 2.0, 4.0])
def test_infosft_zero_above_p_of_explicit_c(C):
    P = 1 / (1 + math.exp(-C))
    qs = [P + d for d in (1e-4, 1e-3, 0.5 * (1 - P))] + [1.0]
    assert weights_of_q(qs, "infosft", C=C).tolist() == [0.0] * len(qs)
    assert weights_of_q([P - 1e-3], "infosft", C=C).item() > 0


def test_infosft_peak_near_057():
    q = torch.linspace(1e-4, 1 - 1e-4, 100_001, dtype=torch.float64)
    w = token_weights(torch.log(q), "infosft", P=0.93)
    q_star = q[torch.argmax(w)].item()
    assert abs(q_star - 0.57) <= 0.02
    # The peak height, from the formula at the grid argmax.
    assert w.max().item() == pytest.approx(infosft_ref(q_star, C_DEFAULT), abs=1e-5)


def test_infosft_vanishes_as_q_goes_to_zero():
    qs = [1e-2, 1e-3, 1e-6, 1e-9, 1e-20]
    w = weights_of_q(qs, "infosft").tolist()
    assert all(a > b > 0 for a, b in zip(w, w[1:]))
    assert w[-1] < 1e-18
    assert weights_of_q([0.0], "infosft").item() == 0.0


@pytest.mark.parametrize("P", [0.6, 0.8, 0.93, 0.99])
def test_infosft_c_and_p_are_equivalent(P):
    logp = torch.log(torch.linspace(0, 1, 1001, dtype=torch.float64))
    by_p = token_weights(logp, "infosft", P=P)
    by_c = token_weights(logp, "infosft", C=c_from_p(P))
    torch.testing.assert_close(by_p, by_c, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("P, C", [(0.93, C_DEFAULT), (0.75, math.log(3.0)), (0.5 + 1e-9, 4e-9)])
def test_c_from_p_and_p_from_c_values(P, C):
    assert c_from_p(P) == pytest.approx(C, rel=1e-6)
    assert p_from_c(C) == pytest.approx(P, rel=1e-12)


@hyp
@given(st.floats(min_value=0.5, max_value=0.9999, exclude_min=True))
def test_p_from_c_inverts_c_from_p(P):
    assert p_from_c(c_from_p(P)) == pytest.approx(P, rel=1e-12, abs=0)


@hyp
@given(st.floats(min_value=1e-3, max_value=15.0))
def test_c_from_p_inverts_p_from_c(C):
    assert c_from_p(p_from_c(C)) == pytest.approx(C, rel=1e-8, abs=0)


@pytest.mark.parametrize("bad_p", [0.5, 1.0, 0.3, 0.0, 1.2])
def test_c_from_p_rejects_bad_p(bad_p):
    with pytest.raises(ValueError, match=r"\bP\b"):
        c_from_p(bad_p)


@pytest.mark.parametrize("bad_c", [0.0, -1.0])
def test_p_from_c_rejects_bad_c(bad_c):
    with pytest.raises(ValueError, match=r"\bC\b"):
        p_from_c(bad_c)


# ---------------------------------------------------------------- stability

@pytest.mark.parametrize("logp", [0.0, -INF, -1e-12, -1e4, 1e-7], ids=str)
@pytest.mark.parametrize("scheme, knobs", ALL_SCHEMES, ids=SCHEME_IDS)
def test_extreme_logp_gives_finite_weights_in_unit_interval(scheme, knobs, logp):
    w = one_weight(logp, scheme, **knobs)
    assert math.isfinite(w)
    assert 0.0 <= w <= 1.0


@pytest.mark.parametrize("logp", [0.0, 1e-7, -INF, -1e-12, -1e4], ids=str)
def test_infosft_zero_at_the_ends(logp):
    # q = 1 (or clamped, or q so close to 1 that logit(q) > C) and q = 0 give 0.
    assert one_weight(logp, "infosft") == 0.0
    assert one_weight(logp, "infosft", C=20.0) == 0.0  # logit(1 - 1e-12) ~ 27.6


@pytest.mark.parametrize("logp, expected", [(0.0, 1.0), (1e-7, 1.0), (-INF, 0.0), (-1e4, 0.0)],
                         ids=str)
def test_dft_at_the_ends(logp, expected):
    assert one_weight(logp, "dft") == expected


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=str)
@pytest.mark.parametrize("scheme, knobs", ALL_SCHEMES, ids=SCHEME_IDS)
def test_any_float_dtype_gives_float32_same_shape(scheme, knobs, dtype, shape):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(shape, generator=gen, dtype=torch.float64) * 5
    w = token_weights(logp.to(dtype), scheme, **knobs)
    assert w.dtype == torch.float32
    assert w.shape == torch.Size(shape)
    assert torch.isfinite(w).all()
    assert ((w >= 0) & (w <= 1)).all()


@pytest.mark.parametrize("scheme, knobs", ALL_SCHEMES, ids=SCHEME_IDS)
def test_output_carries_no_gradient(scheme, knobs):
    logp = torch.log(torch.tensor(QS, dtype=torch.float64)).requires_grad_(True)
    with torch.enable_grad():
        w = token_weights(logp, scheme, **knobs)
    assert not w.requires_grad
    assert w.grad_fn is None


def test_low_precision_input_matches_float64_reference():
    q = torch.tensor(QS, dtype=torch.float64)
    got = token_weights(torch.log(q).to(torch.bfloat16), "infosft")
    # bfloat16 keeps ~3 significant digits of logp: compare loosely.
    expected = [infosft_ref(x, C_DEFAULT) for x in QS]
    assert got.tolist() == pytest.approx(expected, abs=2e-2)


# ---------------------------------------------------------------- ProFit

PROFIT_QS = [0.0, 0.01, 0.05, 0.2, 0.3, 0.5, 0.7, 0.95, 1.0]


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.25, 0.6, 1.0])
def test_profit_higher_keeps_q_at_or_above_tau(tau):
    got = weights_of_q(PROFIT_QS, "profit", threshold=tau, direction="higher").tolist()
    assert got == [1.0 if q >= tau else 0.0 for q in PROFIT_QS]


def test_profit_default_is_higher_at_0_1():
    got = weights_of_q(PROFIT_QS, "profit").tolist()
    assert got == [1.0 if q >= 0.1 else 0.0 for q in PROFIT_QS]


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.25, 0.6, 1.0])
def test_profit_lower_keeps_q_at_or_below_tau(tau):
    got = weights_of_q(PROFIT_QS, "profit", threshold=tau, direction="lower").tolist()
    assert got == [1.0 if q <= tau else 0.0 for q in PROFIT_QS]


@pytest.mark.parametrize("low, high", [(0.1, 0.9), (0.02, 0.6), (0.0, 1.0), (0.25, 0.4)])
def test_profit_middle_keeps_q_between(low, high):
    got = weights_of_q(PROFIT_QS, "profit", threshold=(low, high), direction="middle").tolist()
    assert got == [1.0 if low <= q <= high else 0.0 for q in PROFIT_QS]


def test_profit_middle_default_band():
    got = weights_of_q(PROFIT_QS, "profit", direction="middle").tolist()
    assert got == [1.0 if 0.1 <= q <= 0.9 else 0.0 for q in PROFIT_QS]


def _random_logp(n: int) -> torch.Tensor:
    return -torch.rand(n, generator=torch.Generator().manual_seed(123), dtype=torch.float64) * 4


@pytest.mark.parametrize("tau", [0.1, 0.3, 0.5, 0.9])
def test_profit_random_drops_fraction_tau(tau):
    w = token_weights(_random_logp(100_000), "profit", threshold=tau, direction="random")
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    dropped = (w == 0).float().mean().item()
    assert abs(dropped - tau) <= 0.01


@pytest.mark.parametrize("tau, expected", [(0.0, 1.0), (1.0, 0.0)])
def test_profit_random_extreme_tau(tau, expected):
    w = token_weights(_random_logp(1000), "profit", threshold=tau, direction="random")
    assert (w == expected).all()


def test_profit_random_repeatable_per_seed():
    logp = _random_logp(10_000)
    a = token_weights(logp, "profit", threshold=0.5, direction="random", seed=7)
    b = token_weights(logp, "profit", threshold=0.5, direction="random", seed=7)
    c = token_weights(logp, "profit", threshold=0.5, direction="random", seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("knobs", [{}, {"direction": "lower", "threshold": 0.4},
                                   {"direction": "middle"}, {"direction": "random"}],
                         ids=["higher", "lower", "middle", "random"])
def test_profit_weights_are_zero_or_one(knobs):
    w = token_weights(_random_logp(5000), "profit", **knobs)
    values = set(w.unique().tolist())
    assert values <= {0.0, 1.0}
    assert values == {0.0, 1.0}  # the sample is varied enough to hit both


# ---------------------------------------------------------------- property tests

q_floats = st.floats(min_value=0.0, max_value=1.0)
logp_floats = st.one_of(st.floats(min_value=-1e4, max_value=0.0), st.just(-INF))


@hyp
@given(logp=logp_floats)
@pytest.mark.parametrize("scheme, knobs", ALL_SCHEMES, ids=SCHEME_IDS)
def test_weights_finite_in_unit_interval_over_logp(scheme, knobs, logp):
    w = one_weight(logp, scheme, **knobs)
    assert math.isfinite(w) and 0.0 <= w <= 1.0


@hyp
@given(q=q_floats)
@pytest.mark.parametrize("scheme, knobs", ALL_SCHEMES, ids=SCHEME_IDS)
def test_weights_finite_in_unit_interval_over_q(scheme, knobs, q):
    w = one_weight(log_or_neg_inf(q), scheme, **knobs)
    assert math.isfinite(w) and 0.0 <= w <= 1.0


@hyp
@given(q=q_floats, P=st.floats(min_value=0.6, max_value=0.999))
def test_infosft_in_unit_interval_for_p_from_0_6(q, P):
    # Bounded by 1 only while C >= 1/e (P >= ~0.591); see the report on small C.
    w = one_weight(log_or_neg_inf(q), "infosft", P=P)
    assert math.isfinite(w) and 0.0 <= w <= 1.0


@hyp
@given(
    q=st.floats(min_value=1e-6, max_value=1 - 1e-6, exclude_min=True, exclude_max=True),
    C=st.one_of(st.just(C_DEFAULT), st.floats(min_value=0.1, max_value=20.0)),
)
def test_infosft_matches_formula(q, C):
    got = one_weight(math.log(q), "infosft", C=C)
    expected = q * max(0.0, 1 - math.log(q / (1 - q)) / C)
    assert close(got, expected), (q, C, got, expected)


@hyp
@given(q=q_floats, P=st.one_of(st.just(P_DEFAULT), st.floats(min_value=0.55, max_value=0.999)))
def test_infosft_zero_iff_q_at_least_p(q, P):
    w = one_weight(log_or_neg_inf(q), "infosft", P=P)
    if q >= P + 1e-6 or q == 0.0:
        assert w == 0.0
    elif 1e-30 <= q <= P - 1e-6:
        # Below ~1e-38 q itself underflows in float32, so only check from 1e-30.
        assert w > 0.0


@hyp
@given(a=q_floats, b=q_floats)
def test_dft_monotone_in_q(a, b):
    lo, hi = sorted((a, b))
    w = weights_of_q([lo, hi], "dft").tolist()
    assert w[0] <= w[1]


@hyp
@given(q=q_floats)
def test_dft_equals_q(q):
    assert close(one_weight(log_or_neg_inf(q), "dft"), q, abs_tol=1e-7, rel_tol=1e-6)


@hyp
@given(q=q_floats, tau=q_floats)
def test_profit_higher_lower_partition(q, tau):
    logp = log_or_neg_inf(q)
    hi = one_weight(logp, "profit", threshold=tau, direction="higher")
    lo = one_weight(logp, "profit", threshold=tau, direction="lower")
    assert hi in (0.0, 1.0) and lo in (0.0, 1.0)
    assert hi + lo >= 1.0  # every token is kept by at least one side
    if abs(q - tau) > 1e-6:  # away from float32 rounding at the boundary
        assert hi == float(q >= tau) and lo == float(q <= tau)


# ---------------------------------------------------------------- invalid knobs

@pytest.mark.parametrize(
    "scheme, knobs, pattern",
    [
        ("infosft", {"C": 0}, r"\bC\b"),
        ("infosft", {"C": -1}, r"\bC\b"),
        ("infosft", {"C": -1e-9}, r"\bC\b"),
        ("infosft", {"C": INF}, r"\bC\b"),
        ("infosft", {"C": math.nan}, r"\bC\b"),
        ("infosft", {"P": 0.5}, r"\bP\b"),
        ("infosft", {"P": 1.0}, r"\bP\b"),
        ("infosft", {"P": 0.3}, r"\bP\b"),
        ("infosft", {"P": math.nan}, r"\bP\b"),
        ("infosft", {"C": 2.0, "P": 0.9}, r"\bC\b.*\bP\b"),
        ("profit", {"threshold": -0.1}, "threshold"),
        ("profit", {"threshold": 1.5}, "threshold"),
        ("profit", {"threshold": -0.1, "direction": "lower"}, "threshold"),
        ("profit", {"threshold": 1.5, "direction": "random"}, "threshold"),
        ("profit", {"threshold": "0.5"}, "threshold"),
        ("profit", {"threshold": (0.5, 0.5), "direction": "middle"}, "threshold"),
        ("profit", {"threshold": (0.8, 0.2), "direction": "middle"}, "threshold"),
        ("profit", {"threshold": (-0.1, 0.5), "direction": "middle"}, "threshold"),
        ("profit", {"threshold": (0.5, 1.5), "direction": "middle"}, "threshold"),
        ("profit", {"threshold": 0.5, "direction": "middle"}, "threshold"),
        ("profit", {"threshold": (0.1, 0.2, 0.3), "direction": "middle"}, "threshold"),
        ("profit", {"direction": "sideways"}, "direction"),
        ("profit", {"seed": 1.5}, "seed"),
        ("profit", {"seed": "1"}, "seed"),
        ("bogus", {}, "scheme"),
        ("SFT", {}, "scheme"),
        ("infosft", {"Cee": 1}, "Cee"),
        ("sft", {"Cee": 1}, "Cee"),
        ("profit", {"tau": 0.1}, "tau"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]}" for k in v),
)
def test_invalid_knobs_raise_naming_the_knob(scheme, knobs, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_knobs(scheme, **knobs)
    with pytest.raises(ValueError, match=pattern):
        token_weights(torch.zeros(3), scheme, **knobs)


# ---------------------------------------------------------------- defaults

def test_resolve_knobs_defaults():
    info = resolve_knobs("infosft")
    assert set(info) == {"C", "P"}
    assert info["C"] == pytest.approx(2.5867, abs=1e-4)
    assert info["C"] == pytest.approx(C_DEFAULT, rel=1e-12)
    assert info["P"] == 0.93
    assert resolve_knobs("profit") == {"threshold": 0.1, "direction": "higher", "seed": 0}
    assert resolve_knobs("sft") == {}
    assert resolve_knobs("dft") == {}


def test_resolve_knobs_fills_the_other_infosft_knob():
    by_c = resolve_knobs("infosft", C=2.0)
    assert by_c["C"] == 2.0
    assert by_c["P"] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-12)
    by_p = resolve_knobs("infosft", P=0.8)
    assert by_p == {"C": pytest.approx(math.log(4.0), rel=1e-12), "P": 0.8}


def test_resolve_knobs_middle_default_and_none_knobs():
    assert resolve_knobs("profit", direction="middle") == {
        "threshold": [0.1, 0.9], "direction": "middle", "seed": 0}
    # None means "not given"; knobs of another scheme are ignored.
    assert resolve_knobs("infosft", C=None, P=None) == resolve_knobs("infosft")
    assert resolve_knobs("sft", C=-1, threshold=5) == {}


# ---------------------------------------------------------------- C at float32's limits

# float32's smallest normal and largest values, written out.
F32_TINY, F32_MAX = 2.0 ** -126, (2 - 2.0 ** -23) * 2.0 ** 127
EXTREME_QS = [1e-30, 1e-6, 0.01, 0.2, 0.3, 0.45, 0.5, 0.55, 0.9, 0.999999, 1.0]


@pytest.mark.parametrize("knobs", [
    {"C": F32_TINY}, {"C": 1e-30}, {"C": 1e-10}, {"C": 1e30}, {"C": F32_MAX},
    {"P": 0.9999999999}, {"P": 0.5000000001}, {"P": 0.5 + 2 ** -52},
], ids=lambda k: ",".join(f"{n}={v:g}" for n, v in k.items()))
def test_extreme_c_gives_finite_weights_equal_to_float64_formula(knobs):
    C = knobs["C"] if "C" in knobs else math.log(knobs["P"] / (1 - knobs["P"]))
    got = weights_of_q(EXTREME_QS, "infosft", **knobs)
    assert torch.isfinite(got).all(), got
    for q, w in zip(EXTREME_QS, got.tolist()):
        # q * logit(q) / C written out in float64: finite up to 0.28 / 1.2e-38.
        expected = 0.0 if q >= 1 else q * max(0.0, 1 - logit(q) / C)
        assert close(w, expected, abs_tol=1e-6, rel_tol=1e-5), (q, w, expected)


@pytest.mark.parametrize("knobs", [
    {"C": 1e39}, {"C": 1e-39}, {"C": 1e-45}, {"C": INF}, {"C": -INF}, {"C": math.nan},
    {"C": 10 ** 400}, {"C": "2.5"}, {"C": True}, {"P": 10 ** 400}, {"P": "0.9"},
], ids=lambda k: ",".join(f"{n}={v!r}"[:20] for n, v in k.items()))
def test_c_beyond_float32_is_an_error_naming_the_knob(knobs):
    [name] = knobs
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        resolve_knobs("infosft", **knobs)


@pytest.mark.parametrize("seed", [-2 ** 63 - 1, 2 ** 63, 2 ** 64])
def test_profit_seed_out_of_range_names_the_seed(seed):
    with pytest.raises(ValueError, match=r"^seed must be"):
        token_weights(torch.zeros(3), "profit", direction="random", threshold=0.5, seed=seed)
