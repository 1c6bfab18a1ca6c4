"""A safe arithmetic evaluator for agents' `calculate` tool: parsed with `ast`, never `eval`.

Numbers, `+ - * / // % **`, unary signs and parentheses; nothing else (no names, calls, attributes).
Bounded so a hostile expression cannot eat the machine: short input, small exponents, and every
intermediate value must stay below `MAX_MAGNITUDE`.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e15

Number = int | float

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class CalculatorError(ValueError):
    """The expression is not plain bounded arithmetic; the message says what to change."""


def calculate(expression: str) -> Number:
    """Evaluate an arithmetic expression; ints stay ints when exact (`7/7` -> 1, `10/4` -> 2.5)."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression is {len(expression)} chars; at most {MAX_CHARS} allowed")
    if not expression.strip():
        raise CalculatorError("expression is empty; write numbers and + - * / // % ** ( )")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expression!r}; write numbers and + - * / // % ** ( )") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_number(value: Number) -> str:
    """How a result is shown to the agent: `85`, `2.5`, `0.333333`."""
    if isinstance(value, float):
        value = round(value, 6)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        # bool is an int subclass; `True + 1` is not arithmetic an agent should rely on
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        return _bounded(_binary(node.op, left, right))
    raise CalculatorError(f"{_describe(node)} is not allowed; use numbers and + - * / // % ** ( )")


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Pow) and abs(right) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {right} is too large; at most {MAX_EXPONENT}")
    if isinstance(op, ast.Div) and isinstance(left, int) and isinstance(right, int) and right != 0:
        if left % right == 0:
            return left // right  # exact: keep an int so the agent sees "1", not "1.0"
    try:
        result = _BINARY[type(op)](left, right)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError(f"result is too large; at most {MAX_MAGNITUDE:g} in magnitude") from None
    if isinstance(result, complex):
        raise CalculatorError("result is not a real number")
    return result


def _bounded(value: Number) -> Number:
    if isinstance(value, float) and math.isnan(value):
        raise CalculatorError("result is not a number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"result is too large; at most {MAX_MAGNITUDE:g} in magnitude")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Attribute):
        return "attribute access"
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return f"{type(node).__name__}"
