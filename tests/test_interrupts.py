"""Signals during a fleet operation (deepfleet/interrupts.py), sent to this process for real."""

import os
import signal

import pytest

from deepfleet.interrupts import interrupts, shield


def test_a_signal_raises_once_and_later_ones_are_only_noted():
    notes = []
    with interrupts(notes.append):
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # while the batch goes back: noted, not raised
        os.kill(os.getpid(), signal.SIGHUP)
    assert [n.split(":")[0] for n in notes] == ["SIGINT", "SIGHUP"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_shielded_step_finishes_before_the_interrupt_is_raised():
    steps = []
    with interrupts(lambda message: None):
        with pytest.raises(KeyboardInterrupt, match="SIGHUP"):
            with shield():
                os.kill(os.getpid(), signal.SIGHUP)
                steps.append("the step went on")
            steps.append("never")
    assert steps == ["the step went on"]


def test_outside_an_operation_shield_changes_nothing():
    with shield():
        pass
