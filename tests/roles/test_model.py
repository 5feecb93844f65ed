"""The model role's decisions that need no host: the disk-room check (roles/disk_room.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from roles.disk_room import GIB, check_model_disk
from roles.facts import ModelReleaseState


class Refused(Exception):
    pass


def check_disk_room(host_name, where, free, to_send, release_size, keep):
    """The push check alone: a host that keeps nothing yet, on a filesystem big enough in steady state."""
    state = {"free_bytes": free, "staged": {}, "kept_bytes": {"old": (keep + 1) * release_size}}
    problem = check_model_disk(host_name, where, state, to_send, release_size, "new", keep)
    if problem:
        raise Refused(problem)


def test_a_push_that_leaves_room_for_one_more_release_goes_ahead():
    check_disk_room("h1", "/opt/deepfleet/models", free=20 * GIB, to_send=10 * GIB, release_size=10 * GIB, keep=3)


def test_a_push_that_would_not_fit_with_room_for_the_next_release_is_refused_with_the_numbers():
    with pytest.raises(Refused) as error:
        check_disk_room("h1", "/opt/deepfleet/models", free=15 * GIB, to_send=6 * GIB, release_size=10 * GIB, keep=3)
    assert str(error.value) == (
        "h1: not enough disk for the model push in /opt/deepfleet/models: 15.00 GiB free, the push needs "
        "6.00 GiB plus 10.00 GiB kept free for the next release = 16.00 GiB. Free 1.00 GiB on the host "
        "(it keeps model_keep_releases=3 releases) and deploy again")


def test_small_numbers_are_shown_in_mib():
    with pytest.raises(Refused, match=r"30.0 MiB free, the push needs 17.9 MiB plus 17.9 MiB .* = 35.8 MiB"):
        check_disk_room("h1", "/m", free=30 << 20, to_send=18_790_420, release_size=18_790_420, keep=3)


def test_the_release_state_probe_counts_releases_not_the_current_link(tmp_path):
    """Three kept releases and `<name>@current` pointing at one: three, so keep=3 is converged."""
    for release in ("aaa", "bbb", "ccc"):
        (tmp_path / f"tiny@{release}").mkdir()
        (tmp_path / f"tiny@{release}" / ".deepfleet-complete.json").write_text("{}")
    os.symlink("tiny@ccc", tmp_path / "tiny@current")
    (tmp_path / ".tiny@ddd.partial").mkdir()
    fact = ModelReleaseState()
    output = subprocess.run(fact.command(str(tmp_path), "tiny", "ccc"), shell=True, capture_output=True, text=True,
                            check=True).stdout
    state = fact.process(output.splitlines())
    assert (state["current"], state["kept"], state["complete"]) == ("ccc", ["aaa", "bbb", "ccc"], {})
    assert state["other_partials"] == [".tiny@ddd.partial"] and state["staged"] == {}


def test_a_host_gets_only_the_kek_of_the_release_it_receives_sealed_to_it(control_data, wheelhouse):
    from deepfleet.modelkeys import load_model_keys, rotate_kek
    from deepfleet.paths import SITE_DEPLOY

    from .factplan import load_case, plan

    keys = load_model_keys(control_data["model_keys_dir"])
    old = keys.current_kek_id()
    new = rotate_kek(keys)  # the release is encrypted under the current KEK; the old one opens nothing here
    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, control_data)
    pushed = [op for op in ops if "Model key-encryption key" in op.name]
    assert [op.name.rsplit(" ", 1)[1] for op in pushed] == [new] and old not in " ".join(o.name for o in ops)
    commands = " ".join(pushed[0].shell())
    assert f"systemd-creds encrypt --name=model-kek-{new}.key" in commands
    assert f"/etc/deepfleet/keys/model-kek-{new}.cred" in commands and "/dev/shm/deepfleet-secret-" in commands
    unit = next(op for op in ops if op.name.endswith("Runtime systemd unit")).uploads()
    assert "model unseal-keys --keys-dir /etc/deepfleet/keys --to /run/deepfleet-runtime/keys --user deepfleet" \
        in unit["/etc/systemd/system/deepfleet-runtime.service"]


def test_a_filesystem_too_small_for_the_kept_releases_is_refused_with_what_is_missing():
    """150 GiB releases, keep 3: 600 GiB over time (three kept + the next staging). A data disk that
    holds one release and has 310 GiB free fits this push, never the steady state: refused now."""
    state = {"free_bytes": 310 * GIB, "staged": {}, "kept_bytes": {"r1": 150 * GIB}}
    problem = check_model_disk("gpu1", "/data/models", state, 150 * GIB, 150 * GIB, "r3", keep=3)
    assert problem == ("gpu1: /data/models cannot hold model_keep_releases=3 releases of 150.00 GiB plus the staging "
                       "of the next one (600.00 GiB): the filesystem has 310.00 GiB free and the kept releases hold "
                       "150.00 GiB, 140.00 GiB missing. Give deepfleet_models_dir a larger filesystem, or lower "
                       "model_keep_releases")
    assert check_model_disk("gpu1", "/data/models", state, 150 * GIB, 150 * GIB, "r3", keep=2) is None


def test_bytes_already_staged_count_as_room_for_the_steady_state():
    """250 GiB free + 300 GiB kept + 100 GiB of this push staged = 650 GiB >= 600 GiB (keep 3 + a staging);
    without the staged bytes it would be 50 GiB short."""
    state = {"free_bytes": 250 * GIB, "staged": {"a": 100 * GIB}, "kept_bytes": {"r1": 150 * GIB, "r2": 150 * GIB}}
    assert check_model_disk("gpu1", "/m", state, 50 * GIB, 150 * GIB, "r3", keep=3) is None
    assert "50.00 GiB missing" in check_model_disk("gpu1", "/m", {**state, "staged": {}}, 50 * GIB, 150 * GIB,
                                                   "r3", keep=3)


def test_the_release_state_probe_measures_kept_releases(tmp_path):
    for release, size in (("aaa", 1000), ("bbb", 2500)):
        (tmp_path / f"tiny@{release}" / "encrypted").mkdir(parents=True)
        (tmp_path / f"tiny@{release}" / ".deepfleet-complete.json").write_text("{}")
        (tmp_path / f"tiny@{release}" / "encrypted" / "w").write_bytes(b"x" * size)
    fact = ModelReleaseState()
    output = subprocess.run(fact.command(str(tmp_path / "missing" / "models"), "tiny", "ccc"), shell=True,
                            capture_output=True, text=True, check=True).stdout
    assert fact.process(output.splitlines())["kept_bytes"] == {}  # not made yet: measured on its parent
    output = subprocess.run(fact.command(str(tmp_path), "tiny", "ccc"), shell=True, capture_output=True, text=True,
                            check=True).stdout
    assert fact.process(output.splitlines())["kept_bytes"] == {"aaa": 1002, "bbb": 2502}


def test_models_live_where_deepfleet_models_dir_says(control_data, wheelhouse):
    from deepfleet.paths import SITE_DEPLOY

    from .factplan import load_case, plan

    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, {**control_data, "deepfleet_models_dir": "/data/models"})
    names = [op.name for op in ops]
    assert "deepfleet base | Directory /data/models" in names
    assert not [name for name in names if "/opt/deepfleet/models" in name]
    push = next(op for op in ops if op.name.startswith("deepfleet model | Model ") and "GB encrypted" in op.name)
    assert any("/data/models/.tiny" in command for command in push.shell())
    activate = next(op for op in ops if "Activate model" in op.name)
    assert "--models-dir /data/models" in " ".join(activate.shell())
