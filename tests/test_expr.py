"""User expressions: whitelisted math only, compiled to torch, differentiated symbolically."""

import math
import re

import pytest
import torch

from diffobj.expr import ExprError, compile_expr

LAM = torch.linspace(-8, 8, 33, dtype=torch.float64)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sigmoid(2 - lam)", lambda x: 1 / (1 + torch.exp(x - 2))),
        ("sech(lam / 2)", lambda x: 1 / torch.cosh(x / 2)),
        ("softplus(lam)", lambda x: torch.log1p(torch.exp(x))),
        (
            "normal_pdf(lam, 2.4, 2.4)",
            lambda x: torch.exp(-((x - 2.4) ** 2) / (2 * 2.4**2)) / (2.4 * math.sqrt(2 * math.pi)),
        ),
        ("min(1, 5 * exp(-lam))", lambda x: torch.clamp(5 * torch.exp(-x), max=1)),
        ("max(abs(lam), 1) ** 2", lambda x: torch.clamp(x.abs(), min=1) ** 2),
        (
            "erf(lam) + atan(lam) + tanh(lam)",
            lambda x: torch.erf(x) + torch.atan(x) + torch.tanh(x),
        ),
        ("-lam + pi * e", lambda x: -x + math.pi * math.e),
    ],
)
def test_expressions_evaluate_to_their_formula(text, expected):
    assert torch.allclose(
        compile_expr(text, ["lam"])(lam=LAM), expected(LAM), rtol=1e-12, atol=1e-15
    )


def test_parameters_are_substituted():
    w = compile_expr("sigmoid(b - lam)", ["lam"], {"b": 2.0})
    assert torch.allclose(w(lam=LAM), torch.sigmoid(2 - LAM))


def test_symbolic_derivative_matches_closed_form():
    # d/dt log(cos^2/sin^2)(pi t / 2) = -pi / (sin(pi t/2) cos(pi t/2))
    lam = compile_expr("2 * log(cos(pi * t / 2)) - 2 * log(sin(pi * t / 2))", ["t"])
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    expected = -math.pi / (torch.sin(math.pi * t / 2) * torch.cos(math.pi * t / 2))
    assert torch.allclose(lam.diff("t")(t=t), expected, rtol=1e-12)


def test_derivative_of_sigmoid_and_softplus_is_exact():
    x = LAM
    assert torch.allclose(
        compile_expr("sigmoid(lam)", ["lam"]).diff("lam")(lam=x),
        torch.sigmoid(x) * torch.sigmoid(-x),
    )
    assert torch.allclose(
        compile_expr("softplus(lam)", ["lam"]).diff("lam")(lam=x), torch.sigmoid(x)
    )


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("__import__('os').system('x')", "__import__"),
        ("lam.real", "lam.real"),
        ("(lambda x: x)(lam)", "lambda"),
        ("[x for x in lam]", "[x for x in lam]"),
        ("'lam'", "'lam'"),
        ("foo + lam", "foo"),
        ("gamma(lam)", "gamma"),
        ("lam if lam else 1", "lam if lam else 1"),
        ("lam < 1", "lam < 1"),
    ],
)
def test_non_math_is_rejected_naming_the_expression_and_token(text, token):
    with pytest.raises(ExprError) as err:
        compile_expr(text, ["lam"])
    assert repr(text) in str(err.value)
    assert token.split("(")[0].split(".")[0] in str(err.value)


def test_syntax_error_and_wrong_arity_are_clear():
    with pytest.raises(ExprError, match="not valid math"):
        compile_expr("exp(lam", ["lam"])
    with pytest.raises(ExprError, match="normal_pdf takes 3"):
        compile_expr("normal_pdf(lam)", ["lam"])


def test_derivatives_of_abs_and_max_are_the_sign_and_the_step():
    d = compile_expr("abs(lam) + max(lam, 1)", ["lam"]).diff("lam")
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], dtype=torch.float64)
    assert torch.equal(d(lam=x), torch.sign(x) + (x > 1).double())


# ---- bounded parsing: hostile input is refused at once, never folded or evaluated -----------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # sympy would fold 9**387420489 exactly: an integer of ~370 million digits
        ("9**9**9**9", "'9**9**9' has the exponent 387420489"),
        ("lam ** 1000000000", "has the exponent 1000000000 (at most 1000"),
        ("(lam**1000)**1000", "has the exponent 1000000 (at most 1000"),
        # sympy distributes the power over the coefficient: 2**1000 * lam**1000
        ("(2*lam)**1000", "beyond float64's range"),
        ("10**300 * 10**300", "beyond float64's range"),
        ("1" * 400, "beyond float64's range"),
        ("1e999", "not a finite real number"),
        ("1 / 0", "not a finite real number"),
        ("sqrt(-1)", "not a finite real number"),
        ("exp(" * 50 + "lam" + ")" * 50, "nested too deeply"),
        ("lam" + " + lam" * 300, "characters (at most 1000)"),
        ("(" * 300 + "lam" + ")" * 300, "not valid math"),  # Python's own nesting limit
    ],
)
def test_hostile_expressions_are_refused_in_one_line(text, message):
    with pytest.raises(ExprError, match=re.escape(message)) as err:
        compile_expr(text, ["lam"])
    assert "\n" not in str(err.value) and len(str(err.value)) < 250


def test_bounds_leave_ordinary_powers_and_constants_exact():
    lam = LAM
    assert torch.allclose(compile_expr("(2*lam)**10", ["lam"])(lam=lam), 1024 * lam**10)
    assert torch.equal(compile_expr("2**-3 + 0*lam", ["lam"])(lam=lam), torch.full_like(lam, 0.125))
    assert compile_expr("2**999 / 2**998", ["lam"])(lam=lam).unique().item() == 2.0
