"""The host's apt sources as a fact, and roles that extend them instead of adding conflicting entries.

The expectations are apt's own rules and the vendors' instructions, not the recorded plans:
apt refuses to update when two entries for one URI and suite carry different Signed-By values;
Debian's NvidiaGraphicsDrivers page puts nvidia-driver in non-free, the open module and
nvidia-persistenced in contrib, the GSP firmware in non-free-firmware; NVIDIA's CUDA installation
guide for Debian enables contrib; cuda-keyring writes
/etc/apt/sources.list.d/cuda-debian12-x86_64.list; NVIDIA's container toolkit guide writes
/etc/apt/sources.list.d/nvidia-container-toolkit.list; Docker's guide writes docker.list.
"""

from __future__ import annotations

import pytest

from roles.aptsources import AptSources, apt_entries, source_plan, with_components
from roles.docker import docker
from roles.nvidia_container_toolkit import nvidia_container_toolkit
from roles.nvidia_driver import nvidia_driver

from .factplan import load_case, plan, with_facts

BOOKWORM = "/etc/apt/sources.list.d/debian.sources"
MIRROR = "http://deb.debian.org/debian"
INSTALLER_SOURCES_LIST = (  # what Debian 12's installer writes
    "#deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 NETINST]/ bookworm main non-free-firmware\n\n"
    "deb http://deb.debian.org/debian/ bookworm main non-free-firmware\n"
    "deb-src http://deb.debian.org/debian/ bookworm main non-free-firmware\n\n"
    "deb http://security.debian.org/debian-security bookworm-security main non-free-firmware\n"
    "deb http://deb.debian.org/debian/ bookworm-updates main non-free-firmware\n")
CUDA_KEYRING_LIST = ("deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
                     "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/ /\n")
TOOLKIT_GUIDE_LIST = ("deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
                      "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n")
DOCKER_GUIDE_LIST = ("deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian "
                     "bookworm stable\n")


def sources_fact(files: dict[str, str]) -> dict:
    lines = []
    for path, text in files.items():
        lines += [f"==> deepfleet apt source: {path}", *text.splitlines(), ""]
    return {"$output": lines}


def stock_sources() -> dict[str, str]:
    return AptSources().process(load_case("debian12-2xa100-stock")["roles.aptsources.AptSources"]["$output"])


def applied(sources: dict[str, str], ops) -> dict[str, str]:
    """The host's sources files after the planned uploads and removals."""
    after = dict(sources)
    for op in ops:
        for path, text in op.uploads().items():
            if path.startswith("/etc/apt/sources.list"):
                after[path] = text
        for command in op.shell():
            if command.startswith("rm -f /etc/apt/sources.list"):
                after.pop(command.split()[-1], None)
    return after


def assert_apt_can_update(sources: dict[str, str]) -> None:
    """apt's rule: one Signed-By value per URI and suite, across every file."""
    seen: dict[tuple[str, str], set] = {}
    for entry in apt_entries(sources):
        for suite in entry.suites:
            seen.setdefault((entry.uri.rstrip("/"), suite), set()).add(entry.signed_by)
    conflicts = {key: values for key, values in seen.items() if len(values) > 1}
    assert not conflicts, f"apt-get update would fail: Conflicting values set for option Signed-By {conflicts}"


def components(sources: dict[str, str], uri: str, suite: str) -> set[str]:
    return {c for e in apt_entries(sources) if e.uri.rstrip("/") == uri and suite in e.suites for c in e.components}


def test_the_fact_reads_one_line_and_deb822_files_verbatim():
    sources = stock_sources()
    assert list(sources) == [BOOKWORM]
    assert sources[BOOKWORM].startswith("Types: deb\n# http://snapshot.debian.org/")
    entries = apt_entries({**sources, "/etc/apt/sources.list": INSTALLER_SOURCES_LIST})
    assert [(e.uri, e.suites, e.components) for e in entries] == [
        ("http://deb.debian.org/debian/", ("bookworm",), ("main", "non-free-firmware")),
        ("http://security.debian.org/debian-security", ("bookworm-security",), ("main", "non-free-firmware")),
        ("http://deb.debian.org/debian/", ("bookworm-updates",), ("main", "non-free-firmware")),
        ("http://deb.debian.org/debian", ("bookworm", "bookworm-updates"), ("main",)),
        ("http://deb.debian.org/debian-security", ("bookworm-security",), ("main",)),
    ]


def test_components_are_added_in_place_to_deb822_and_one_line_entries():
    deb822 = with_components(BOOKWORM, stock_sources()[BOOKWORM], MIRROR, "bookworm", ("contrib", "non-free"))
    assert "Components: main contrib non-free\nSigned-By:" in deb822
    assert deb822.count("Components: main\n") == 1  # the security stanza is another URI: untouched
    assert deb822.count("# http://snapshot.debian.org/") == 2  # comments kept
    one_line = with_components("/etc/apt/sources.list", INSTALLER_SOURCES_LIST, MIRROR, "bookworm", ("contrib",))
    assert "deb http://deb.debian.org/debian/ bookworm main non-free-firmware contrib\n" in one_line
    assert "deb http://deb.debian.org/debian/ bookworm-updates main non-free-firmware\n" in one_line
    assert one_line.startswith("#deb cdrom:")


@pytest.mark.parametrize(("source", "needed"), [
    ("distro", {"main", "contrib", "non-free", "non-free-firmware"}),
    ("cuda_repo", {"main", "contrib"}),
])
def test_debian_driver_extends_the_stock_deb822_entry_and_keeps_apt_working(source, needed):
    data = {"nvidia_driver_source": source}
    if source == "distro":
        data.update(nvidia_driver_branch="535", nvidia_driver_open_kernel_modules=True)
    ops = plan(load_case("debian12-2xa100-stock"), nvidia_driver, data=data)
    after = applied(stock_sources(), ops)
    assert_apt_can_update(after)
    assert components(after, MIRROR, "bookworm") >= needed
    assert "/etc/apt/sources.list.d/deepfleet-debian-nvidia.list" not in after
    assert not [op for op in ops if "debian-archive-keyring" in repr(op.commands) and "signing key" in op.name]


def test_debian_installer_sources_list_is_extended_the_same_way():
    facts = with_facts(load_case("debian12-2xa100-stock"), **{
        "roles.aptsources.AptSources": sources_fact({"/etc/apt/sources.list": INSTALLER_SOURCES_LIST})})
    ops = plan(facts, nvidia_driver, data={"nvidia_driver_source": "distro", "nvidia_driver_branch": "535"})
    after = applied({"/etc/apt/sources.list": INSTALLER_SOURCES_LIST}, ops)
    assert_apt_can_update(after)
    assert components(after, MIRROR, "bookworm") >= {"contrib", "non-free", "non-free-firmware"}
    assert set(after) == {"/etc/apt/sources.list"}


def test_without_an_entry_for_the_mirror_the_role_writes_its_own_signed_by_file():
    facts = with_facts(load_case("debian12-2xa100-stock"), **{"roles.aptsources.AptSources": {"$output": []}})
    ops = plan(facts, nvidia_driver, data={"nvidia_driver_source": "distro", "nvidia_driver_branch": "535"})
    after = applied({}, ops)
    assert after == {"/etc/apt/sources.list.d/deepfleet-debian-nvidia.list": (
        "# Written by deepfleet: Debian contrib non-free non-free-firmware (NVIDIA driver). Edits are overwritten.\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.debian.org/debian bookworm contrib non-free non-free-firmware\n")}


@pytest.mark.parametrize(("role", "case", "existing", "ours"), [
    (nvidia_driver, "debian12-2xa100-stock", {"/etc/apt/sources.list.d/cuda-debian12-x86_64.list": CUDA_KEYRING_LIST},
     "/etc/apt/sources.list.d/deepfleet-cuda.list"),
    (nvidia_container_toolkit, "debian12-2xa100-stock",
     {"/etc/apt/sources.list.d/nvidia-container-toolkit.list": TOOLKIT_GUIDE_LIST.replace("$(ARCH)", "amd64")},
     "/etc/apt/sources.list.d/deepfleet-nvidia-container-toolkit.list"),
    (docker, "debian12-2xa100-stock", {"/etc/apt/sources.list.d/docker.list": DOCKER_GUIDE_LIST},
     "/etc/apt/sources.list.d/deepfleet-docker.list"),
])
def test_a_vendor_list_already_on_the_host_is_reused_not_duplicated(role, case, existing, ours):
    host_sources = {**stock_sources(), **existing}
    facts = with_facts(load_case(case), **{"roles.aptsources.AptSources": sources_fact(host_sources),
                                           "files.File": {f"path={ours}": {"mode": 644}, "*": None}})
    ops = plan(facts, role)
    after = applied(host_sources, ops)
    assert_apt_can_update(after)
    assert ours not in after  # an earlier run's own copy is removed: it would conflict
    assert not [op for op in ops if op.name.endswith("signing key") and op.change != "no"
                and ours.rsplit("deepfleet-", 1)[1].removesuffix(".list") in repr(op.commands)]


def test_plan_of_an_unrelated_suite_writes_its_own_file():
    decision = source_plan(stock_sources(), "/etc/apt/sources.list.d/deepfleet-x.list", MIRROR, "trixie", ("main",))
    assert (decision.reuse, decision.rewritten) == (None, {})
