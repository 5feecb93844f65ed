"""The decrypted release must fit in memory where the engine reads it: checked before any push."""

from __future__ import annotations

import pytest

from deepfleet.paths import SITE_DEPLOY
from roles.common import RoleError
from roles.decrypt_room import decrypt_room_problem, tmpfs_bytes

from .factplan import changed, load_case, plan, with_facts

GIB = 1 << 30
HOST = {"ram_bytes": 512 * GIB, "run_bytes": 51 * GIB}  # /run at Debian's and Ubuntu's 10% of RAM


def test_a_release_larger_than_run_is_refused_naming_the_shortfall_and_the_setting():
    problem = decrypt_room_problem("vllm", 64 * GIB, None, HOST)
    assert problem == ("the vllm engine decrypts the release (64.0 GiB) into memory, and the unit's "
                       "RuntimeDirectory is on /run, a tmpfs of 51.0 GiB: 13.0 GiB short. Set "
                       "runtime_decrypt_tmpfs_size to at least \"71G\" (the host has 512.0 GiB of RAM)")
    assert decrypt_room_problem("vllm", 64 * GIB, "80G", HOST) is None


def test_a_tmpfs_the_host_ram_cannot_back_is_refused():
    problem = decrypt_room_problem("llamacpp", 300 * GIB, "400G", HOST)
    assert problem.startswith("the decrypted file and llama.cpp's own copy of the weights need 600.0 GiB of RAM, "
                              "and the host has 512.0 GiB (90% usable): 139.2 GiB short.")


def test_the_transformers_engine_decrypts_into_its_own_memory_and_is_not_checked():
    assert decrypt_room_problem("transformers", 900 * GIB, None, HOST) is None


def test_docker_mode_counts_the_kernels_default_tmpfs_size():
    assert "half the RAM: 256.0 GiB" in decrypt_room_problem("vllm", 300 * GIB, None, HOST, mode="docker")


def test_tmpfs_sizes_are_read_as_tmpfs_reads_them():
    assert (tmpfs_bytes("200G", 0), tmpfs_bytes("512m", 0), tmpfs_bytes("50%", 100 * GIB)) == (
        200 * GIB, 512 << 20, 50 * GIB)
    with pytest.raises(RoleError, match="runtime_decrypt_tmpfs_size is '200 GB'; write a size like"):
        tmpfs_bytes("200 GB", 0)


def test_the_site_deploy_refuses_before_any_push_on_a_host_with_too_little_memory(wheelhouse, control_data):
    facts = with_facts(load_case("debian12-arm64-edge"), **{"roles.decrypt_room.HostMemory": {"$output": ["4", "10"]}})
    data = {**control_data, "runtime_engine": "llamacpp", "runtime_wheel_extras": ["llamacpp"]}
    with pytest.raises(RoleError, match=r"^h1: the llamacpp engine decrypts the release \(0\.0 GiB\) into memory, "
                                        r"and the unit's RuntimeDirectory is on /run, a tmpfs of 0\.0 GiB: .*"
                                        r"nothing was pushed$"):
        plan(facts, SITE_DEPLOY, data=data)
