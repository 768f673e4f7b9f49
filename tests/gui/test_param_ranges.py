"""The parameters panel's spin boxes accept exactly the ranges validation accepts."""

from __future__ import annotations

from backend.params import panel_specs


def test_spin_box_ranges_equal_the_declared_ranges(window) -> None:
    spins = window.parameters.spins
    for spec in panel_specs():
        spin = spins[spec.key]
        assert (spin.minimum(), spin.maximum()) == (spec.min, spec.max), spec.key
        assert spin.toolTip() == spec.help
