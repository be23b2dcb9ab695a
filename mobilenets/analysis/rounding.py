"""The rule that holds our exact counts to the papers' rounded figures."""
from __future__ import annotations

import math
from decimal import Decimal


def matches(value: float, published: str, step: float | None = None) -> bool:
    """Does `value` give `published` when rounded or truncated to its last printed digit?"""
    step = step or 10.0 ** Decimal(published).as_tuple().exponent
    target = float(published)
    return any(math.isclose(f(value / step) * step, target) for f in (round, math.floor))
