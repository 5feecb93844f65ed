"""When the driver role reboots, refuses to, or stops with the fix: from what the module build produced,
Secure Boot, and whether the host serves traffic; and the driver held against unattended upgrades.

Written from the vendors' instructions: NVIDIA's ansible role reboots into a kernel the module was
built for; DKMS signs with /var/lib/dkms/mok.pub, which Secure Boot accepts only once enrolled
(`mokutil --import`, then MokManager at the console); Ubuntu's signed prebuilt modules are
linux-modules-nvidia-<branch>-server[-open]-<kernel> with nvidia-headless-no-dkms-<branch>-server[-open];
NVIDIA's driver installation guide locks versions with dnf versionlock, and apt-mark hold holds
apt packages.
"""

from __future__ import annotations

import pytest

from roles.driver_reboot import SecureBoot, module_action
from roles.gpu_facts import NvidiaModuleState
from roles.nvidia_driver import nvidia_driver

from .factplan import changed, find, load_case, plan, with_facts

RUNNING = "5.14.0-427.13.1.el9_4.x86_64"
NEWER = "5.14.0-503.14.1.el9_5.x86_64"


def _module(*lines):
    return NvidiaModuleState().process([f"running={RUNNING}", *lines])


@pytest.mark.parametrize(("lines", "action"), [
    ([], "none"),  # nothing installed yet (planning a fresh host)
    ([f"built={RUNNING} 570.133.20", "installed=570.133.20", "loaded=570.133.20"], "none"),  # converged
    ([f"built={RUNNING} 570.133.20", "installed=570.133.20"], "reboot"),  # built, cannot be loaded now
    ([f"built={NEWER} 570.133.20", f"default={NEWER}"], "reboot"),  # built only for the newer, default kernel
    (["driver=570.133.20"], "fail"),  # a driver is installed, DKMS built no module at all
    ([f"built={NEWER} 570.133.20", f"default={RUNNING}"], "fail"),  # a reboot would come back without it
])
def test_the_reboot_is_decided_from_what_the_build_produced(lines, action):
    assert module_action(_module(*lines))[0] == action


def test_a_build_for_a_kernel_that_is_not_running_reboots_rocky_into_it():
    module = {"$output": [f"running={RUNNING}", f"built={NEWER} 570.133.20", f"default={NEWER}", "loaded=",
                          "installed="]}
    facts = with_facts(load_case("rocky9-8xh100"), **{"roles.gpu_facts.NvidiaModuleState": module})
    ops = plan(facts, nvidia_driver, changed=["packages"])
    assert find(ops, "Reboot to load the new NVIDIA kernel module").change == "yes"
    assert find(ops, "Stop: no NVIDIA kernel module").change == "no"


def test_secure_boot_fact():
    assert SecureBoot().process(["SecureBoot enabled", "/var/lib/dkms/mok.pub is already enrolled"]) == {
        "enabled": True, "dkms_key_enrolled": True}
    assert SecureBoot().process(["SecureBoot disabled"]) == {"enabled": False, "dkms_key_enrolled": False}
    assert SecureBoot().process([]) == {"enabled": False, "dkms_key_enrolled": False}  # no mokutil: legacy BIOS


SB_ON = {"roles.driver_reboot.SecureBoot": {"$output": ["SecureBoot enabled"]}}


def test_ubuntu_with_secure_boot_uses_canonicals_signed_prebuilt_modules():
    ops = plan(with_facts(load_case("ubuntu2404-rtx4090"), **SB_ON), nvidia_driver,
               data={"nvidia_driver_source": "distro"}, changed=["packages"])
    install = find(ops, ": packages").shell()[-1]
    kernel = load_case("ubuntu2404-rtx4090")["server.KernelVersion"]
    assert install.endswith(f"linux-modules-nvidia-570-server-open-{kernel} nvidia-headless-no-dkms-570-server-open "
                            "nvidia-utils-570-server")
    assert "dkms" not in install.replace("no-dkms", "")
    assert find(ops, "Stop: Secure Boot").change == "no"


@pytest.mark.parametrize(("case", "data"), [("rocky9-8xh100", {}), ("ubuntu2204-2xa100", {})])
def test_secure_boot_with_dkms_stops_before_any_reboot_naming_the_mok_enrolment(case, data):
    ops = plan(with_facts(load_case(case), **SB_ON), nvidia_driver, data=data, changed=["packages"])
    stop = find(ops, "Stop: Secure Boot")
    names = [op.name for op in ops]
    assert names.index(stop.name) < names.index(find(ops, "Reboot to load").name)
    assert stop.change == "yes"
    assert "mokutil --import /var/lib/dkms/mok.pub" in stop.shell()[0] and stop.shell()[0].endswith("exit 1")
    enrolled = with_facts(load_case(case), **{"roles.driver_reboot.SecureBoot": {"$output": [
        "SecureBoot enabled", "/var/lib/dkms/mok.pub is already enrolled"]}})
    assert find(plan(enrolled, nvidia_driver, data=data, changed=["packages"]), "Stop: Secure Boot").change == "no"


@pytest.mark.parametrize(("case", "command"), [
    ("ubuntu2204-2xa100", "apt-mark hold nvidia-driver-570-open cuda-drivers-570"),
    ("rocky9-8xh100", "dnf versionlock add '*nvidia*570*'"),
])
def test_the_pinned_driver_is_held_against_unattended_upgrades(case, command):
    ops = plan(load_case(case), nvidia_driver)
    assert command in find(ops, "Hold the NVIDIA driver packages").shell()


def test_a_held_driver_is_not_held_again():
    held = with_facts(load_case("ubuntu2204-2xa100"), **{"roles.driver_reboot.HeldPackages": {
        "$output": ["nvidia-driver-570-open", "cuda-drivers-570"]}})
    assert find(plan(held, nvidia_driver), "Hold the NVIDIA driver packages").change == "no"


def test_a_host_serving_traffic_is_not_rebooted_unless_allowed():
    serving = with_facts(load_case("ubuntu2204-2xa100"), **{
        "systemd.SystemdStatus": {"*": {"deepfleet-gateway.service": True, "deepfleet-runtime.service": True}},
        "roles.gpu_facts.NvidiaModuleState": {"$output": ["loaded=550.54.15", "installed=570.133.20"]}})
    ops = plan(serving, nvidia_driver, changed=[])
    refusal = find(ops, "refused: the host serves traffic")
    assert refusal.change == "yes" and "deepfleet rollout" in refusal.shell()[0]
    assert not [name for name in changed(ops) if name.endswith("(only if it could not be loaded)")]
    allowed = plan(serving, nvidia_driver, data={"nvidia_driver_allow_reboot_serving": True}, changed=[])
    assert find(allowed, "Reboot to load the new NVIDIA kernel module").change == "yes"


def test_a_host_drained_by_rollout_may_be_rebooted(monkeypatch):
    serving = with_facts(load_case("ubuntu2204-2xa100"), **{
        "systemd.SystemdStatus": {"*": {"deepfleet-runtime.service": True}},
        "roles.gpu_facts.NvidiaModuleState": {"$output": ["loaded=550.54.15", "installed=570.133.20"]}})
    monkeypatch.setenv("DEEPFLEET_DRAINED", "1")  # what deepfleet rollout sets for the hosts it drained
    assert find(plan(serving, nvidia_driver, changed=[]), "Reboot to load the new NVIDIA kernel module").change == "yes"


def test_a_module_only_a_reboot_can_load_is_a_change_the_plan_shows_so_a_rollout_takes_the_host(monkeypatch):
    """A host already holding a driver that only a reboot loads (another version runs: an `up` refused the
    reboot while it served, whose message says to run `deepfleet rollout`) is a definite change in the dry
    run: `deepfleet rollout` plans from that dry run's changes, and would skip the host as up to date."""
    def facts(loaded):
        return with_facts(load_case("ubuntu2204-2xa100"), **{
            "systemd.SystemdStatus": {"*": {"deepfleet-runtime.service": True}},
            "roles.gpu_facts.NvidiaModuleState": {"$output": [f"loaded={loaded}", "installed=570.133.20"]}})

    assert find(plan(facts("550.54.15"), nvidia_driver), "refused: the host serves traffic").change == "yes"
    monkeypatch.setenv("DEEPFLEET_DRAINED", "1")  # the rollout's converge, the host drained
    assert find(plan(facts("550.54.15"), nvidia_driver), "Reboot to load the new NVIDIA kernel module").change == "yes"
    # Installed, none loaded: the step before may load it in place, so the reboot is decided at run time.
    assert find(plan(facts(""), nvidia_driver), "Reboot to load the new NVIDIA kernel module").change == "conditional"
