"""NVSwitch boards (HGX A100/H100/H200) get Fabric Manager of the driver's branch, as NVIDIA prescribes.

From NVIDIA's own packaging and guides, not the recorded plans: the Fabric Manager user guide and
NVIDIA/yum-packaging-fabric-manager ("the version of fabricmanager must match the NVIDIA driver";
RHEL: `dnf module install nvidia-driver:<stream>/fm`, the module's NvSwitch profile; apt:
nvidia-fabricmanager-<branch>), started as nvidia-fabricmanager.service. Without it CUDA fails
with error 802 (CUDA_ERROR_SYSTEM_NOT_READY) on such boards.
"""

from __future__ import annotations

import pytest

from roles.common import RoleError
from roles.gpu_facts import NvidiaNvSwitches, NvidiaPciDevices
from roles.nvidia_driver import nvidia_driver

from .factplan import find, load_case, plan, with_facts

HGX_A100 = [f"0000:{bus:02x}:00.0 0x030200 0x20b2" for bus in (7, 15, 71, 78, 135, 144, 183, 189)] + [
    f"0000:{bus:02x}:00.0 0x068000 0x1af1" for bus in range(0xc1, 0xc7)]  # 8 GPUs, 6 NVSwitches


def _hgx(case: str) -> dict:
    scan = {"$output": HGX_A100}
    return with_facts(load_case(case), **{"roles.gpu_facts.NvidiaPciDevices": scan,
                                          "roles.gpu_facts.NvidiaNvSwitches": scan})


def test_nvswitches_are_a_fact_and_not_gpus():
    assert len(NvidiaPciDevices().process(HGX_A100)) == 8
    assert NvidiaNvSwitches().process(HGX_A100) == [f"0000:{bus:02x}:00.0" for bus in range(0xc1, 0xc7)]


def test_rocky_hgx_h100_installs_the_fm_profile_and_starts_fabric_manager():
    ops = plan(load_case("rocky9-8xh100"), nvidia_driver)  # 8 H100 + 4 NVSwitches (0x22a3)
    assert find(ops, "NVIDIA driver module").shell() == ["dnf -y module install nvidia-driver:570-open/fm"]
    fabric = find(ops, "NVIDIA Fabric Manager for 4 NVSwitches")
    assert fabric.shell() == ["systemctl start nvidia-fabricmanager.service",
                              "systemctl enable nvidia-fabricmanager.service"]


@pytest.mark.parametrize(("case", "data"), [("ubuntu2204-2xa100", {}),
                                            ("ubuntu2204-2xa100", {"nvidia_driver_source": "distro"}),
                                            ("debian12-2xa100-stock", {})])
def test_apt_hosts_with_nvswitches_get_fabric_manager_of_the_same_branch(case, data):
    ops = plan(_hgx(case), nvidia_driver, data=data)
    assert find(ops, ": packages").shell()[-1].endswith(" nvidia-fabricmanager-570")
    assert find(ops, "NVIDIA Fabric Manager for 6 NVSwitches").change == "yes"


def test_boards_without_nvswitches_get_no_fabric_manager():
    ops = plan(load_case("ubuntu2204-2xa100"), nvidia_driver)
    assert "fabricmanager" not in repr([op.commands for op in ops])


def test_debian_distro_driver_refuses_an_nvswitch_board_naming_the_fix():
    with pytest.raises(RoleError, match="Fabric Manager, which Debian does not ship.*'cuda_repo'"):
        plan(_hgx("debian12-2xa100-stock"), nvidia_driver,
             data={"nvidia_driver_source": "distro", "nvidia_driver_branch": "535"})
