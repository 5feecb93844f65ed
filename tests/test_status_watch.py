"""`deepfleet status --watch`: the table redrawn every SECONDS from a fresh look at the fleet until
Ctrl-C, the exit code the last round's. The fleet is given (describing one needs hosts:
tests/fleet/test_monitoring.py runs `status` against a real one); what is watched is the real loop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from deepfleet.commands import status as status_command
from deepfleet.status import HostStatus


@pytest.fixture
def rounds(monkeypatch):
    """Each look at the fleet: h1 healthy, then its runtime unit failed, then Ctrl-C."""
    looks = [[HostStatus("h1", ["replica"], units={"deepfleet-runtime": "active"})],
             [HostStatus("h1", ["replica"], units={"deepfleet-runtime": "failed"})]]
    seen = []

    def fleet_status(fleet):
        seen.append(time.monotonic())
        if len(seen) > len(looks):
            raise KeyboardInterrupt
        return looks[len(seen) - 1]

    monkeypatch.setattr("deepfleet.fleet.describe_fleet", lambda path: object())
    monkeypatch.setattr("deepfleet.status.fleet_status", fleet_status)
    return seen



def _args(**options) -> argparse.Namespace:
    return argparse.Namespace(**{"inventory": Path("inventories/fleet.py"), "json": False, "watch": None, **options})


def test_watch_redraws_every_interval_until_ctrl_c_and_exits_with_the_last_rounds_code(rounds, capsys):
    code = status_command.run(_args(watch=0.2))
    assert code == 1  # the last round: h1's runtime unit failed
    assert len(rounds) == 3 and all(later - earlier >= 0.2 for earlier, later in zip(rounds, rounds[1:]))
    out = capsys.readouterr().out
    assert out.count("deepfleet status: inventories/fleet.py") == 2  # one table per round
    assert "runtime active" in out and "runtime failed" in out


def test_without_watch_one_look_and_its_code(rounds):
    assert status_command.run(_args()) == 0
    assert len(rounds) == 1
