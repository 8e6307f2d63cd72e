"""Kubernetes resource quantities ("500m", "4Gi", "1e3"), read with the API server's own grammar.

A spec's `trial.resources` ends up in a pod; a value the API server would refuse (`two`,
`4 gigs`) must be refused at validation, where the field can be named, not at Job creation,
where it fails every trial. The grammar is that of k8s.io/apimachinery/pkg/api/resource
(quantity.go): a signed decimal number, then a binary suffix (Ki..Ei), a decimal SI suffix
(n, u, m, k, M..E) or a decimal exponent (e3, E-2).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

QUANTITY_REGEX = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
"""The grammar as a regular expression (ASCII digits, as Go's \\d); the CRD carries it as a `pattern`."""

_QUANTITY = re.compile(QUANTITY_REGEX)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# Kubernetes itself caps exponents far below what Decimal accepts; a huge exponent would only
# make Decimal build an enormous integer when the value is converted.
_MAX_EXPONENT = 60


def parse_quantity(text: str) -> Decimal:
    """The exact value of a quantity; ValueError naming the grammar when `text` is not one."""
    if not isinstance(text, str):
        raise ValueError(f'{text!r} is not a Kubernetes quantity (a string such as "500m", "2" or "4Gi")')
    match = _QUANTITY.fullmatch(text)  # `$` alone would accept a trailing newline
    if match is None:
        raise ValueError(
            f'"{text}" is not a Kubernetes quantity (a number with an optional suffix: '
            'Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent, e.g. "500m", "2", "4Gi", "1e9")'
        )
    suffix = match.group(3) or ""
    number = text[: len(text) - len(suffix)]
    try:
        value = Decimal(number)
    except InvalidOperation:  # the regex admits only what Decimal reads; kept for safety
        raise ValueError(f'"{text}" is not a Kubernetes quantity') from None
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix in _DECIMAL:
        return value * _DECIMAL[suffix]
    exponent = int(suffix[1:])
    if abs(exponent) > _MAX_EXPONENT:
        raise ValueError(f'"{text}": the exponent is out of range (at most {_MAX_EXPONENT})')
    return value.scaleb(exponent)


def cpu_cores(text: str) -> float:
    """CPU cores in a quantity ("500m" is 0.5)."""
    return float(parse_quantity(text))


def memory_bytes(text: str) -> int:
    """Bytes in a quantity, rounded up as Kubernetes rounds a fractional byte count ("1.5Ki" is 1536)."""
    value = parse_quantity(text)
    whole = int(value)
    return whole + 1 if value > whole else whole
