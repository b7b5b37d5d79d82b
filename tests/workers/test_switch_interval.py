"""An SCP process switches threads every 0.5 ms, not CPython's 5 ms, and the gateway's
processes set it as they start: the main process (it runs an SCP) and each extra SCP
process."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from gateway.settings import Settings
from workers.serve import SCP_SWITCH_INTERVAL_S, Gateway, set_switch_interval


def test_an_scp_process_switches_threads_every_half_millisecond() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        set_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(0.0005) == SCP_SWITCH_INTERVAL_S
    finally:
        sys.setswitchinterval(before)


def test_the_gateway_sets_it_as_it_starts(
    make_settings: Callable[..., Settings], start_gateway: Callable[[Settings], Gateway]
) -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        start_gateway(make_settings())
        assert sys.getswitchinterval() == pytest.approx(SCP_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)
