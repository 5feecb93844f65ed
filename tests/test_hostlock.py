"""Host locks (deepfleet/hostlock.py) with the real shell commands, run on this machine instead of
over ssh (the host's "ssh" is `sh -c`)."""

import json
import subprocess
import sys

import pytest

from deepfleet import hostlock
from deepfleet.fleet import FleetHost


def _host(name, home):
    return FleetHost(name, ["sh", "-c"], False, True, True, (), {"deepfleet_home": str(home)})


@pytest.fixture
def hosts(tmp_path):
    return [_host(f"h{i}", tmp_path / f"h{i}") for i in (1, 2)]


def test_a_second_operation_is_refused_naming_the_lock_and_takes_nothing(hosts):
    first = hostlock.new_lock("rollout")
    hostlock.take(hosts, first, "inv.py")
    second = hostlock.new_lock("up")
    with pytest.raises(hostlock.HostLocked, match=rf"h1 is locked by rollout {first['id']} by .* taken \d+ s ago "
                                                  rf".*lock.json\); wait until it ends.*deepfleet unlock inv.py "
                                                  rf"--lock {first['id']}"):
        hostlock.take(hosts, second, "inv.py")
    assert [lock["id"] for lock in hostlock.show(hosts).values()] == [first["id"]] * 2  # nothing of the second


def test_a_partly_taken_lock_is_given_back_when_a_later_host_is_locked(hosts):
    other = hostlock.new_lock("rollback")
    hostlock.take(hosts[1:], other)
    with pytest.raises(hostlock.HostLocked, match="h2 is locked by rollback"):
        hostlock.take(hosts, hostlock.new_lock("rollout"))
    assert hostlock.show(hosts) == {"h1": None, "h2": other}


def test_the_same_id_takes_its_own_lock_again_and_gives_back_only_its_own(hosts):
    lock = hostlock.new_lock("rollout")
    hostlock.take(hosts, lock)
    hostlock.take(hosts, lock)  # a resumed rollout with the same id
    hostlock.give_back(hosts, hostlock.new_lock("up"))  # not its lock: stays
    assert all(hostlock.show(hosts).values())
    hostlock.give_back(hosts, lock)
    assert hostlock.show(hosts) == {"h1": None, "h2": None}


def test_a_lock_whose_process_is_gone_is_called_stale_and_is_broken_only_on_purpose(hosts):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock = hostlock.new_lock("rollout") | {"pid": int(dead)}
    hostlock.take(hosts, lock, "inv.py")
    with pytest.raises(hostlock.HostLocked, match=f"the lock is stale; break it with `deepfleet unlock inv.py "
                                                  f"--lock {lock['id']}`"):
        hostlock.take(hosts, hostlock.new_lock("up"), "inv.py")
    assert hostlock.break_lock(hosts, "some-other-id") == []
    assert hostlock.break_lock(hosts, lock["id"]) == ["h1", "h2"]
    with hostlock.locked(hosts, "up", "inv.py") as mine:
        assert {held["id"] for held in hostlock.show(hosts).values()} == {mine["id"]}
    assert hostlock.show(hosts) == {"h1": None, "h2": None}


def test_the_lock_file_is_whole_json_with_its_owner(hosts, tmp_path):
    hostlock.take(hosts[:1], hostlock.new_lock("rollout", "r-7"))
    record = json.loads((tmp_path / "h1" / "lock.json").read_text())
    assert record["id"] == "r-7" and record["operation"] == "rollout" and "@" in record["owner"]
    assert list((tmp_path / "h1").iterdir()) == [tmp_path / "h1" / "lock.json"]  # no temporary file left
