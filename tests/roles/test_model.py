"""The model role's decisions that need no host: the disk-room check."""

from __future__ import annotations

import os
import subprocess

import pytest
from pyinfra.api.exceptions import OperationError

from roles.facts import ModelReleaseState
from roles.model import GIB, check_disk_room


def test_a_push_that_leaves_room_for_one_more_release_goes_ahead():
    check_disk_room("h1", "/opt/deepfleet/models", free=20 * GIB, to_send=10 * GIB, release_size=10 * GIB, keep=3)


def test_a_push_that_would_not_fit_with_room_for_the_next_release_is_refused_with_the_numbers():
    with pytest.raises(OperationError) as error:
        check_disk_room("h1", "/opt/deepfleet/models", free=15 * GIB, to_send=6 * GIB, release_size=10 * GIB, keep=3)
    assert str(error.value) == (
        "h1: not enough disk for the model push in /opt/deepfleet/models: 15.00 GiB free, the push needs "
        "6.00 GiB plus 10.00 GiB kept free for the next release = 16.00 GiB. Free 1.00 GiB on the host "
        "(it keeps model_keep_releases=3 releases) and deploy again")


def test_small_numbers_are_shown_in_mib():
    with pytest.raises(OperationError, match=r"30.0 MiB free, the push needs 17.9 MiB plus 17.9 MiB .* = 35.8 MiB"):
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
