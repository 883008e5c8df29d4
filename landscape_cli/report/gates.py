"""``--fail-if "lambda_max>50"``: thresholds on a result's named numbers (exit code 1)."""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass

from landscape_cli.errors import LandscapeError

OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
             ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    expr: str
    name: str
    op: str
    threshold: float

    def check(self, scalars: dict[str, float | None]) -> dict:
        if self.name not in scalars:
            names = ", ".join(sorted(scalars))
            raise LandscapeError(f"--fail-if '{self.expr}': no number named '{self.name}' "
                                 f"(this command reports: {names})")
        value = scalars[self.name]
        violated = value is None or OPERATORS[self.op](value, self.threshold)
        return {"expr": self.expr, "value": value, "violated": bool(violated)}


def parse_gate(expr: str) -> Gate:
    found = _GATE.match(expr)
    if not found:
        raise LandscapeError(f"--fail-if '{expr}': expected NAME OP NUMBER, e.g. 'lambda_max>50' "
                             f"(OP one of {' '.join(OPERATORS)})")
    name, op, number = found.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise LandscapeError(f"--fail-if '{expr}': '{number}' is not a number") from None
    return Gate(expr=expr.strip(), name=name, op=op, threshold=threshold)


def _matches(name: str, pattern: str) -> bool:
    """``top_N`` stands for top_1, top_2, ...; any other pattern is the name itself."""
    if pattern.endswith("_N"):
        return re.fullmatch(re.escape(pattern[:-1]) + r"[1-9]\d*", name) is not None
    return name == pattern


def check_names(gates: Iterable[Gate], known: Iterable[str]) -> None:
    """Refuse, before any work, a gate on a number the command never reports."""
    known = list(known)
    for gate in gates:
        if not any(_matches(gate.name, pattern) for pattern in known):
            raise LandscapeError(f"--fail-if '{gate.expr}': no number named '{gate.name}' "
                                 f"(this command reports: {', '.join(sorted(known))})")
