"""An SCP process's thread switch interval comes from settings (``scp_switch_interval_ms``),
within bounds that keep the interpreter usable."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from gateway.settings import Settings
from workers.serve import set_switch_interval


def test_the_scp_process_takes_its_switch_interval_from_settings() -> None:
    before = sys.getswitchinterval()
    try:
        set_switch_interval(Settings(scp_switch_interval_ms=1.5))
        assert sys.getswitchinterval() == pytest.approx(0.0015)
        set_switch_interval(Settings())
        assert sys.getswitchinterval() == pytest.approx(0.0005)  # the default, not CPython's
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("value", [0, 0.05, 101, -1])
def test_a_switch_interval_out_of_bounds_is_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="scp_switch_interval_ms"):
        Settings(scp_switch_interval_ms=value)
