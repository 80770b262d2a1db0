"""Human-readable figures with their units (decimal prefixes, as vendors and papers use)."""

from __future__ import annotations

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]


def with_prefix(value: float, unit: str, digits: int = 3) -> str:
    """`value` with a decimal SI prefix: with_prefix(46.7e9, "params") -> '46.7 Gparams'."""
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}"


def params(count: float) -> str:
    """Parameter count in billions, as model cards print it: '46.70 B'."""
    return f"{count / 1e9:,.2f} B" if count >= 1e8 else f"{count / 1e6:,.2f} M"


def byte_size(count: float) -> str:
    """Bytes with a decimal prefix: '93.4 GB'."""
    return with_prefix(count, "B")


def flops(count: float) -> str:
    """FLOPs with a decimal prefix: '25.8 GFLOP'."""
    return with_prefix(count, "FLOP")
