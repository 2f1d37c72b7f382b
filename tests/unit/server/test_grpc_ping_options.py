"""The pings start_grpc derives from --idle-timeout-s: half of it between pings and half to acknowledge
one, never below PING_FLOOR_MS."""

from __future__ import annotations

import pytest

from quantship.server.grpc_server import PING_FLOOR_MS, PING_TIMEOUT_ARG, ping_options
from quantship.server.settings import ServerSettings

PINGS = ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", PING_TIMEOUT_ARG)


@pytest.mark.parametrize(
    ("idle_timeout_s", "half_ms"),
    [(ServerSettings.idle_timeout_s, 37_500), (3.0, 1500), (2.0, PING_FLOOR_MS)],
)
def test_pings_come_every_half_idle_timeout_and_wait_half_of_it(idle_timeout_s: float, half_ms: int) -> None:
    assert dict(ping_options(idle_timeout_s)) == dict.fromkeys(PINGS, half_ms)


@pytest.mark.parametrize("idle_timeout_s", [1.9, 0.05, 1e-9])
def test_a_short_idle_timeout_pings_no_more_than_once_a_second_nor_waits_less_for_an_answer(
    idle_timeout_s: float,
) -> None:
    """--idle-timeout-s 0.05 pinged every 25 ms while calls ran and cut a client whose acknowledgement
    took 25 ms; 1 s is grpc-go's floor for a server's pings."""
    assert PING_FLOOR_MS == 1000
    assert dict(ping_options(idle_timeout_s)) == dict.fromkeys(PINGS, PING_FLOOR_MS)
