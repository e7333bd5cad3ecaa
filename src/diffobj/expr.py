"""User expressions: strings from YAML parsed into sympy, never evaluated as Python.

A string is parsed with ``ast`` in eval mode and walked against a whitelist (numbers, the four
operations and power, unary minus, calls of whitelisted functions, whitelisted names); the tree
is then rebuilt as a sympy expression. Compiled callables evaluate that sympy tree with torch
operations, so the same expression runs on CPU or GPU tensors and can be differentiated
symbolically.

Parsing is bounded whatever the input: the text's length and the tree's depth and size are
limited before sympy sees it, and every power is checked before sympy builds it, since sympy
folds constant powers exactly (``9**9**9**9`` would be an integer of ~10^8 digits, a hang).
Numbers stay within float64's range, so an expression that parses also evaluates.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import sympy
import torch

from diffobj.errors import UserError


class ExprError(UserError):
    """An expression that is not whitelisted math. The message names the expression and token."""


class sigmoid(sympy.Function):  # noqa: N801 - sympy functions are lower case by convention
    """Logistic function, kept as its own node so torch evaluates it stably."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        x = self.args[0]
        return sigmoid(x) * sigmoid(-x)


class softplus(sympy.Function):  # noqa: N801
    """log(1 + e^x), kept as its own node so torch evaluates it without overflow."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sigmoid(self.args[0])


def _normal_pdf(x: sympy.Expr, mean: sympy.Expr, std: sympy.Expr) -> sympy.Expr:
    return sympy.exp(-((x - mean) ** 2) / (2 * std**2)) / (std * sympy.sqrt(2 * sympy.pi))


FUNCTIONS: dict[str, tuple[int, Callable[..., sympy.Expr]]] = {
    # name: (number of arguments, sympy builder)
    "exp": (1, sympy.exp),
    "log": (1, sympy.log),
    "sqrt": (1, sympy.sqrt),
    "sigmoid": (1, sigmoid),
    "softplus": (1, softplus),
    "tanh": (1, sympy.tanh),
    "sinh": (1, sympy.sinh),
    "cosh": (1, sympy.cosh),
    "sech": (1, sympy.sech),
    "sin": (1, sympy.sin),
    "cos": (1, sympy.cos),
    "tan": (1, sympy.tan),
    "atan": (1, sympy.atan),
    "erf": (1, sympy.erf),
    "abs": (1, sympy.Abs),
    "min": (2, sympy.Min),
    "max": (2, sympy.Max),
    "normal_pdf": (3, _normal_pdf),
}
CONSTANTS: dict[str, sympy.Expr] = {"pi": sympy.pi, "e": sympy.E}

# Bounds of a parse. Library expressions are a few dozen characters; these are far above that.
MAX_LENGTH = 1000  # characters
MAX_DEPTH = 40  # nesting of the syntax tree
MAX_NODES = 400  # nodes of the syntax tree
MAX_EXPONENT = 1000  # |p| of a numeric exponent
MAX_BITS = 1000  # |numbers| within 2**+-1000 (about 1e+-301; float64 reaches 2**1024)

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def parse(text: str, names: Iterable[str], params: Mapping[str, float] | None = None) -> sympy.Expr:
    """Parse ``text`` into sympy. ``names`` become free symbols; ``params`` are substituted.

    Raises ExprError naming the expression and the offending token.
    """
    params = dict(params or {})
    allowed = set(names)
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        raise ExprError(
            f"expression {text!r}: expected a string of math, got {type(text).__name__}"
        )
    source = str(text).strip()
    tree = _syntax_tree(source)
    shown = _short(source)

    def fail(node: ast.AST, what: str) -> ExprError:
        token = _short(ast.get_source_segment(source, node) or type(node).__name__)
        return ExprError(f"expression {shown!r}: {what} {token!r} is not allowed")

    def checked(node: ast.AST, value: sympy.Expr) -> sympy.Expr:
        problem = _number_problem(value)
        if problem:
            token = _short(ast.get_source_segment(source, node) or source)
            raise ExprError(f"expression {shown!r}: {token!r} {problem}")
        return value

    def build(node: ast.AST) -> sympy.Expr:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise fail(node, "constant")
            number = (
                sympy.Float(node.value)
                if isinstance(node.value, float)
                else sympy.Integer(node.value)
            )
            return checked(node, number)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Pow):
                problem = _power_problem(left, right)
                if problem:
                    token = _short(ast.get_source_segment(source, node) or source)
                    raise ExprError(f"expression {shown!r}: {token!r} {problem}")
            return checked(node, _BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = build(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Name):
            if node.id in params:
                return checked(node, sympy.Float(params[node.id]))
            if node.id in allowed:
                return sympy.Symbol(node.id, real=True)
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise fail(node, "unknown name")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise fail(node.func, "unknown function")
            if node.keywords:
                raise fail(node.keywords[0], "keyword argument")
            arity, builder = FUNCTIONS[node.func.id]
            if len(node.args) != arity:
                raise ExprError(
                    f"expression {shown!r}: {node.func.id} takes {arity} argument(s), "
                    f"got {len(node.args)}"
                )
            return checked(node, builder(*(build(arg) for arg in node.args)))
        raise fail(node, "syntax")

    return build(tree)


def _short(text: str, limit: int = 60) -> str:
    """Text for a one-line message: a long expression is cut, not printed whole."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _syntax_tree(source: str) -> ast.Expression:
    """The Python syntax tree of ``source``, refused when too long, deep or large to be math."""
    if len(source) > MAX_LENGTH:
        raise ExprError(
            f"expression {_short(source)!r}: {len(source)} characters (at most {MAX_LENGTH})"
        )
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ExprError(f"expression {_short(source)!r}: not valid math ({err.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError(f"expression {_short(source)!r}: nested too deeply to be math") from None
    stack, count = [(tree, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            raise ExprError(
                f"expression {_short(source)!r}: nested too deeply or too long "
                f"(at most depth {MAX_DEPTH} and {MAX_NODES} terms)"
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def _bits(number: sympy.Number) -> float:
    """log2 of the magnitude (of numerator and denominator for rationals); inf if not finite."""
    if number.is_Rational:
        return max(abs(number.p).bit_length(), abs(number.q).bit_length())
    if number.is_Float:
        _, mantissa, exponent, bit_count = number._mpf_
        return abs(exponent + bit_count) if mantissa else 0  # inf/nan have mantissa 0, bc -1
    return math.inf


def _number_problem(expr: sympy.Expr) -> str | None:
    """Why ``expr`` cannot be evaluated in float64 (a huge or infinite number), or None."""
    if expr.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo, sympy.I):
        return "is not a finite real number (a division by zero, or a root of a negative?)"
    for power in expr.atoms(sympy.Pow):
        if power.exp.is_Number and abs(power.exp) > MAX_EXPONENT:
            return f"has the exponent {power.exp} (at most {MAX_EXPONENT} in absolute value)"
    for number in expr.atoms(sympy.Number):
        if not number.is_finite or _bits(number) > MAX_BITS:
            return f"holds a number beyond float64's range (|x| up to 2**{MAX_BITS})"
    return None


def _power_problem(base: sympy.Expr, exponent: sympy.Expr) -> str | None:
    """Why sympy must not build base**exponent (it would fold a huge number), or None."""
    if not exponent.is_Number:
        return None  # sympy folds nothing with a symbolic exponent
    if not exponent.is_finite or abs(exponent) > MAX_EXPONENT:
        return f"has the exponent {exponent} (at most {MAX_EXPONENT} in absolute value)"
    coefficient = abs(base.as_coeff_Mul()[0])  # sympy distributes the power over it
    finite = coefficient.is_Number and coefficient.is_finite and coefficient != 0
    if finite and abs(float(exponent)) * abs(math.log2(float(coefficient))) > MAX_BITS:
        return f"is beyond float64's range (|x| up to 2**{MAX_BITS})"
    return None


# sympy node -> torch evaluation. Anything else sympy produces is an error, not a silent fallback.
_TORCH_FUNCS: dict[type, Callable[..., torch.Tensor]] = {
    sympy.exp: torch.exp,
    sympy.log: torch.log,
    sympy.tanh: torch.tanh,
    sympy.sinh: torch.sinh,
    sympy.cosh: torch.cosh,
    sympy.sech: lambda x: 1 / torch.cosh(x),
    sympy.sin: torch.sin,
    sympy.cos: torch.cos,
    sympy.tan: torch.tan,
    sympy.atan: torch.atan,
    sympy.sec: lambda x: 1 / torch.cos(x),
    sympy.csc: lambda x: 1 / torch.sin(x),
    sympy.cot: lambda x: 1 / torch.tan(x),
    sympy.erf: torch.special.erf,
    sympy.Abs: torch.abs,
    sympy.sign: torch.sign,
    sympy.Heaviside: lambda x, *_: torch.heaviside(x, torch.full_like(x, 0.5)),
    sigmoid: torch.sigmoid,
    softplus: torch.nn.functional.softplus,
}


def _evaluate(
    expr: sympy.Expr, env: Mapping[sympy.Symbol, torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    if expr.is_Symbol:
        return env[expr]
    if expr.is_Number or expr in (sympy.pi, sympy.E):
        return torch.full_like(like, _as_float(expr))
    if isinstance(expr, sympy.Piecewise):  # first true condition wins, as in sympy
        out = torch.full_like(like, math.nan)
        for value, cond in reversed(expr.args):
            out = torch.where(_condition(cond, env, like), _evaluate(value, env, like), out)
        return out
    args = [_evaluate(a, env, like) for a in expr.args]
    if expr.is_Add:
        return sum(args[1:], args[0])
    if expr.is_Mul:
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if expr.is_Pow:
        base, exponent = args
        if expr.exp == sympy.Rational(1, 2):
            return torch.sqrt(base)
        return torch.pow(base, exponent)
    if isinstance(expr, sympy.Min):
        return _fold(torch.minimum, args)
    if isinstance(expr, sympy.Max):
        return _fold(torch.maximum, args)
    func = _TORCH_FUNCS.get(expr.func)
    if func is None:
        raise ExprError(
            f"expression {expr}: sympy produced {expr.func.__name__}, which has no torch form"
        )
    return func(*args)


def _as_float(number: sympy.Expr) -> float:
    """A sympy number as a float; one beyond float64 (from a derivative's factors) is +-inf."""
    try:
        return float(number)
    except OverflowError:
        return math.copysign(math.inf, float(sympy.sign(number)))


def _fold(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], args: list[torch.Tensor]
) -> torch.Tensor:
    out = args[0]
    for a in args[1:]:
        out = op(out, a)
    return out


def _condition(
    cond: sympy.Basic, env: Mapping[sympy.Symbol, torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    if cond is sympy.true:
        return torch.ones_like(like, dtype=torch.bool)
    if cond is sympy.false:
        return torch.zeros_like(like, dtype=torch.bool)
    lhs, rhs = (_evaluate(a, env, like) for a in cond.args)
    ops = {
        sympy.StrictLessThan: torch.lt,
        sympy.LessThan: torch.le,
        sympy.StrictGreaterThan: torch.gt,
        sympy.GreaterThan: torch.ge,
        sympy.Equality: torch.eq,
        sympy.Unequality: torch.ne,
    }
    return ops[type(cond)](lhs, rhs)


@dataclass(frozen=True)
class Compiled:
    """A sympy expression compiled to a torch callable of named tensors (broadcast together)."""

    expr: sympy.Expr
    names: tuple[str, ...]

    def __call__(self, **values: torch.Tensor | float) -> torch.Tensor:
        tensors = [v for v in values.values() if isinstance(v, torch.Tensor)]
        like = (
            torch.broadcast_tensors(*tensors)[0]
            if tensors
            else torch.zeros((), dtype=torch.float64)
        )
        env = {}
        for name in self.names:
            if name not in values:
                raise ExprError(f"expression {self.expr}: no value given for {name!r}")
            v = values[name]
            env[sympy.Symbol(name, real=True)] = (
                v if isinstance(v, torch.Tensor) else torch.full_like(like, float(v))
            )
        return _evaluate(self.expr, env, like)

    def diff(self, name: str) -> Compiled:
        """The symbolic derivative with respect to ``name``, compiled."""
        return Compiled(sympy.diff(self.expr, sympy.Symbol(name, real=True)), self.names)

    def depends_on(self, name: str) -> bool:
        return sympy.Symbol(name, real=True) in self.expr.free_symbols


def compile_expr(
    text: str, names: Iterable[str], params: Mapping[str, float] | None = None
) -> Compiled:
    """Parse and compile in one step: ``compile_expr("sigmoid(b - lam)", ["lam"], {"b": 2})``."""
    names = tuple(names)
    return Compiled(parse(text, names, params), names)


# -- names and functions for the optimal-loss method (Xu et al. 2025) --------------------------------
# Kept apart from the tables above so the whitelist grows in one visible place. ``Jstar`` is not
# a function of the expression's other names: it is the optimal loss J*(lam) of the run's
# dataset and process, bound at run time from its optimal-loss table (diffobj.optimal.curve).
OPTIMAL_LOSS = "Jstar"
# step(x) = 1 for x > 0, 0 for x < 0: the indicator 1[sigma < sigma*] of the paper's weighting.
FUNCTIONS["step"] = (1, sympy.Heaviside)
