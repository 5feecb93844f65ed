"""The NVIDIA driver role per OS x GPU case, planned against recorded facts (no GPU here)."""

from __future__ import annotations

import hashlib

import pytest

from roles.common import RoleError
from roles.nvidia_driver import (APT_PIN, NOUVEAU_BLACKLIST, PERSISTENCED_OVERRIDE, PERSISTENCED_OVERRIDE_PATH,
                                 module_needs_reboot, nvidia_driver)

from .factplan import changed, expect_plan, find, load_case, plan, with_facts

CASES = {
    "ubuntu2204-2xa100": {},  # NVIDIA's CUDA repository, open kernel modules
    "ubuntu2404-rtx4090": {"nvidia_driver_source": "distro"},  # Ubuntu's nvidia-headless-570-server-open
    "rocky9-8xh100": {},  # CUDA repository, dnf module stream with DKMS
    "ubuntu2604-2xh100": {"nvidia_driver_source": "distro", "nvidia_driver_branch": "595", "cuda_source": "distro"},  # Canonical's 595-server
    "rocky10-8xh100": {"nvidia_driver_branch": "580", "cuda_version": "13.0"},  # no streams: versionlock, then nvidia-open
    "debian12-nogpu": {},
    "debian12-arm64-edge": {},
}
ONE_GPU = {"roles.gpu_facts.NvidiaPciDevices": {"$output": ["0000:01:00.0 0x030200 0x20b2"]}}


@pytest.mark.parametrize("case", CASES)
def test_plan_is_the_reviewed_plan(case):
    expect_plan(plan(load_case(case), nvidia_driver, data=CASES[case]), f"nvidia_driver/{case}")


@pytest.mark.parametrize("case", ["debian12-nogpu", "debian12-arm64-edge"])
def test_hosts_without_nvidia_device_skip_with_a_reason(case):
    ops = plan(load_case(case), nvidia_driver)
    assert changed(ops) == []
    assert [op.name for op in ops] == ["NVIDIA driver | NVIDIA driver: skipped"]
    assert ops[0].notes == ["no NVIDIA device on the PCI bus (sysfs vendor 0x10de)"]


@pytest.mark.parametrize(("case", "package"), [("ubuntu2204-2xa100", "nvidia-driver-570-open"),
                                               ("rocky9-8xh100", "nvidia-driver:570-open")])
def test_proprietary_modules_leave_out_the_open_flavour(case, package):
    open_plan = repr([op.commands for op in plan(load_case(case), nvidia_driver)])
    proprietary = repr([op.commands for op in plan(load_case(case), nvidia_driver,
                                                   data={"nvidia_driver_open_kernel_modules": False})])
    assert package in open_plan and package not in proprietary
    assert ("nvidia-driver:570-dkms" in proprietary) == case.startswith("rocky")


def test_debian_distro_driver_extends_the_hosts_debian_entry_with_contrib_non_free_and_firmware():
    ops = plan(with_facts(load_case("debian12-nogpu"), **ONE_GPU), nvidia_driver,
               data={"nvidia_driver_source": "distro", "nvidia_driver_branch": "535",
                     "nvidia_driver_open_kernel_modules": False})
    edit = find(ops, "added to /etc/apt/sources.list")
    assert edit.uploads()["/etc/apt/sources.list"] == (
        "deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware\n")
    assert not [op for op in ops if op.name.endswith("signing key")]
    install = find(ops, ": packages").shell()[-1]
    assert install.endswith("install linux-headers-6.1.0-25-amd64 nvidia-driver nvidia-smi firmware-misc-nonfree")


def test_debian_distro_driver_refuses_a_branch_debian_does_not_ship():
    with pytest.raises(RoleError, match="branch 535, not 570.*nvidia_driver_branch to 535"):
        plan(with_facts(load_case("debian12-nogpu"), **ONE_GPU), nvidia_driver,
             data={"nvidia_driver_source": "distro"})


def test_rocky_has_no_distro_driver():
    with pytest.raises(RoleError, match="ships no NVIDIA driver.*'cuda_repo'"):
        plan(load_case("rocky9-8xh100"), nvidia_driver, data={"nvidia_driver_source": "distro"})


def test_initramfs_rebuild_and_reboot_only_run_when_needed():
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_driver)
    assert find(ops, "Rebuild the initramfs without nouveau").change == "conditional"
    assert find(ops, "only if it could not be loaded)").change == "conditional"
    assert "reboot" in " ".join(find(ops, "only if it could not be loaded)").shell())


def test_without_reboot_permission_a_needed_reboot_fails_the_host_with_a_message():
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_driver, data={"nvidia_driver_reboot": False})
    stop = find(ops, "needs a reboot (nvidia_driver_reboot is false)")
    assert stop.change == "conditional" and stop.shell()[0].endswith("exit 1")
    assert not [op for op in ops if "Reboot" in op.name]


@pytest.mark.parametrize(("loaded", "installed", "needs_reboot", "load_command"), [
    ("", "", False, True),  # nothing installed yet (planning a fresh host)
    ("", "570.133.20", True, True),  # installed, not loaded: modprobe it; still not loaded: reboot
    ("550.54.15", "570.133.20", True, False),  # an older module runs: only a reboot replaces it
    ("570.133.20", "570.133.20", False, False),  # converged
])
def test_module_loading_and_reboot_decision(loaded, installed, needs_reboot, load_command):
    module = {"$output": [f"loaded={loaded}", f"installed={installed}"]}
    facts = with_facts(load_case("ubuntu2204-2xa100"), **{"roles.gpu_facts.NvidiaModuleState": module})
    decisions = []
    plan(facts, lambda: decisions.append(module_needs_reboot()))
    assert decisions == [needs_reboot]
    load = find(plan(facts, nvidia_driver), "Load the NVIDIA kernel module")
    assert (load.shell() == ["modprobe nvidia || echo 'the nvidia module cannot be loaded now; the next step "
                             "reboots the host'"]) == load_command


def test_converged_host_plans_no_changes():
    installed = {name: ["1"] for name in ("linux-headers-5.15.0-119-generic", "nvidia-driver-570-open",
                                          "cuda-drivers-570")}
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_driver)
    source = find(ops, "apt source").uploads()["/etc/apt/sources.list.d/deepfleet-cuda.list"]
    pin = find(ops, "apt pin").uploads()[APT_PIN]
    sha1 = {f"path={path}": hashlib.sha1(text.encode()).hexdigest() for path, text in (
        ("/etc/apt/sources.list.d/deepfleet-cuda.list", source), (APT_PIN, pin),
        (PERSISTENCED_OVERRIDE_PATH, PERSISTENCED_OVERRIDE),
        ("/etc/modprobe.d/deepfleet-blacklist-nouveau.conf", NOUVEAU_BLACKLIST))}
    present = {"user": "root", "group": "root", "mode": 644, "size": 1}
    facts = with_facts(load_case("ubuntu2204-2xa100"), **{
        "deb.DebPackages": installed,
        "files.File": {"*": present},
        "files.Directory": {"*": {"user": "root", "group": "root", "mode": 755}},
        "files.Sha1File": sha1,
        "roles.gpu_facts.NvidiaModuleState": {"$output": ["loaded=570.133.20", "installed=570.133.20"]},
        "roles.driver_reboot.HeldPackages": {"$output": ["nvidia-driver-570-open", "cuda-drivers-570"]},
        "systemd.SystemdStatus": {"*": {"nvidia-persistenced.service": True}},
        "systemd.SystemdEnabled": {"*": {"nvidia-persistenced.service": True}},
    })
    assert changed(plan(facts, nvidia_driver)) == [
        "NVIDIA driver | NVIDIA driver 570 for A100: refresh apt lists (after a repository change, or for "
        "missing packages)",
        "NVIDIA driver | Rebuild the initramfs without nouveau",
        "NVIDIA driver | Stop: no NVIDIA kernel module for this host's kernel (only if the build produced none)",
        "NVIDIA driver | Stop: Secure Boot would refuse the unsigned DKMS module (only if its key is not enrolled)",
        "NVIDIA driver | Reboot to load the new NVIDIA kernel module (only if it could not be loaded)",
        "NVIDIA driver | Reload systemd units for nvidia-persistenced",
        "NVIDIA driver | nvidia-persistenced (restarted for persistence mode)",
    ]  # conditional steps only: their conditions (a change, a module mismatch) are false on this host


def test_rocky_installs_headers_of_the_running_kernel_and_enables_crb():
    # NVIDIA's role installs kernel-devel/kernel-headers-{{ansible_kernel}}; kernel-devel-matched pulls the
    # newest kernel instead, and DKMS builds for a kernel that is not running.
    ops = plan(load_case("rocky9-8xh100"), nvidia_driver)
    install = find(ops, ": packages").shell()[-1]
    assert "kernel-devel-5.14.0-427.13.1.el9_4 kernel-headers-5.14.0-427.13.1.el9_4 epel-release" in install
    assert "kernel-devel-matched" not in install
    assert find(ops, "CodeReady Builder").shell() == ["dnf config-manager --set-enabled crb"]
    enabled = with_facts(load_case("rocky9-8xh100"), **{"roles.facts.DnfEnabledRepos": ["baseos", "crb"]})
    assert find(plan(enabled, nvidia_driver), "CodeReady Builder").change == "no"


def test_persistence_mode_is_really_on_with_nvidias_unit_override():
    # Ubuntu's nvidia-persistenced unit runs --no-persistence-mode; NVIDIA's ansible role (and DeepOps) override
    # ExecStart with --persistence-mode, then the unit is restarted once.
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_driver)
    override = find(ops, "persistence mode on").uploads()[
        "/etc/systemd/system/nvidia-persistenced.service.d/deepfleet-persistence-mode.conf"]
    assert override.endswith(
        "[Service]\nExecStart=\nExecStart=/usr/bin/nvidia-persistenced --user root --persistence-mode --verbose\n")
    service = find(ops, "nvidia-persistenced (restarted")
    assert service.change == "conditional"


def test_dev_char_symlinks_keep_containers_gpus_across_daemon_reload():
    # NVIDIA/nvidia-container-toolkit#48 and the toolkit's troubleshooting guide: with systemd cgroups a
    # `systemctl daemon-reload` detaches GPUs unless /dev/char links exist; the remedy is this udev rule
    # in /lib/udev/rules.d/71-nvidia-dev-char.rules plus one `nvidia-ctk system create-dev-char-symlinks --create-all`.
    from roles.nvidia_container_toolkit import nvidia_container_toolkit
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_container_toolkit)
    rule = find(ops, "udev rule").uploads()["/lib/udev/rules.d/71-nvidia-dev-char.rules"]
    assert ('ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", '
            'RUN+="/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"\n') in rule
    links = find(ops, "Create the /dev/char links")
    assert links.shell() == ["nvidia-ctk system create-dev-char-symlinks --create-all"]
    assert links.change == "conditional"
