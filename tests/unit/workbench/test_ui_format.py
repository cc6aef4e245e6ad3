"""How the pages write numbers: a small drift is not written as zero, a missing one is not written as a number."""

from __future__ import annotations

import math

from workbench import ui


def test_a_small_non_zero_amount_is_not_rounded_to_zero():
    assert ui.amount(2.6e-4) == "2.6e-04"
    assert ui.amount(-3e-5) == "-3.0e-05"
    assert ui.amount(0.0) == "0.00" and ui.amount(0.005) == "0.01" and ui.amount(1.234) == "1.23"
    assert ui.amount(0.004, digits=3) == "0.004"


def test_a_missing_or_nan_amount_is_a_dash_not_a_number():
    assert ui.amount(None) == ui.amount(math.nan) == ui.amount("n/a") == "–"
