"""Rocky/RHEL 9 boot with SELinux enforcing (targeted policy): deepfleet's services must still start.

Written from Red Hat's documentation ("Using SELinux", RHEL 9), not from a recorded plan:
- a local file-context rule is added with `semanage fcontext -a -t TYPE 'REGEX'` (package
  policycoreutils-python-utils) and applied with `restorecon -R`; `semanage fcontext -l -C` lists
  the local rules, `restorecon -n -v` says what would be relabelled without changing anything;
- systemd (init_t) starts a service whose executable is an entrypoint of unconfined_service_t
  (bin_t, usr_t, shell_exec_t) in that unconfined domain: it may then read etc_t/var_lib_t files
  and bind any port, so no `semanage port` is needed. deepfleet's executables live in its venvs
  (<deepfleet_home>/venvs/<id>/bin, the unit's ExecStart): they are labelled bin_t, the type Red Hat
  gives executables, so they work wherever deepfleet_home lies (under /srv or /home the default
  labels var_t / user_home_t are no entrypoint and systemd fails with 203/EXEC).
"""

from __future__ import annotations

import pytest

from deepfleet.paths import SITE_DEPLOY
from roles.base import base
from roles.common import RoleError
from roles.selinux import SelinuxState

from .factplan import changed, find, load_case, plan, with_facts

FACT = "roles.selinux.SelinuxState"
RULE = "/opt/deepfleet/venvs/[^/]+/bin(/.*)?"
ENFORCING = ["enforce=1", "policy=targeted", "unconfined=yes"]


def _selinux(*lines: str) -> dict:
    return {FACT: {"*": {"$output": list(lines)}}}


def _commands(ops) -> str:
    return "\n".join(command for op in ops for command in op.shell())


def test_the_fact_reads_the_mode_the_policy_the_local_rules_and_what_would_be_relabelled():
    fact = SelinuxState()
    assert fact.process(["enforce=disabled"])["mode"] == "disabled"
    assert fact.default()["mode"] == "disabled"  # no /sys/fs/selinux: SELinux is off
    state = fact.process([
        "enforce=1", "policy=targeted", "unconfined=yes",
        f"rule={RULE} system_u:object_r:bin_t:s0",
        "relabel=Would relabel /opt/deepfleet/venvs/ab/bin/pip from unconfined_u:object_r:usr_t:s0 to "
        "unconfined_u:object_r:bin_t:s0",
        "relabel=Would relabel /srv/deep fleet/venvs/ab/bin/pip from a:b:var_t:s0 to a:b:bin_t:s0",
    ])
    assert state == {"mode": "enforcing", "policy": "targeted", "unconfined": True, "rules": {RULE: "bin_t"},
                     "relabel": ["/opt/deepfleet/venvs/ab/bin/pip", "/srv/deep fleet/venvs/ab/bin/pip"]}
    assert fact.process(["enforce=0", "policy=targeted", "unconfined=yes"])["mode"] == "permissive"


def test_the_rocky9_fixture_boots_enforcing_as_rocky_does():
    assert SelinuxState().process(load_case("rocky9-8xh100")[FACT]["*"]["$output"])["mode"] == "enforcing"


def test_rocky_enforcing_gets_semanage_a_bin_t_rule_for_the_venvs_and_restorecon():
    ops = plan(load_case("rocky9-8xh100"), base)
    assert find(ops, "semanage").shell() == ["dnf install -y policycoreutils-python-utils"]
    assert find(ops, "SELinux file contexts").shell() == [
        f"semanage fcontext -a -t bin_t '{RULE}'",
        "test ! -d /opt/deepfleet/venvs || restorecon -R -v /opt/deepfleet/venvs",
    ]
    assert "semanage port" not in _commands(ops)  # unconfined_service_t binds any port


def test_the_labels_follow_deepfleet_home():
    ops = plan(load_case("rocky9-8xh100"), base, data={"deepfleet_home": "/srv/deepfleet"})
    assert find(ops, "SELinux file contexts").shell()[0] == (
        "semanage fcontext -a -t bin_t '/srv/deepfleet/venvs/[^/]+/bin(/.*)?'")


def test_permissive_hosts_are_labelled_too_so_enforcing_later_does_not_stop_the_services():
    ops = plan(with_facts(load_case("rocky9-8xh100"), **_selinux("enforce=0", "policy=targeted", "unconfined=yes")),
               base)
    assert f"semanage fcontext -a -t bin_t '{RULE}'" in find(ops, "SELinux file contexts").shell()


def test_a_rule_of_another_type_is_modified_not_added_twice():
    facts = with_facts(load_case("rocky9-8xh100"), **_selinux(*ENFORCING, f"rule={RULE} system_u:object_r:usr_t:s0"))
    assert find(plan(facts, base), "SELinux file contexts").shell()[0] == f"semanage fcontext -m -t bin_t '{RULE}'"


def _labelled_rocky() -> dict:
    facts = load_case("rocky9-8xh100")
    packages = {**facts["rpm.RpmPackages"], "policycoreutils-python-utils": ["3.6-2.1.el9"]}
    return with_facts(facts, **_selinux(*ENFORCING, f"rule={RULE} system_u:object_r:bin_t:s0"),
                      **{"rpm.RpmPackages": packages})


def test_a_second_run_with_the_labels_present_changes_nothing():
    ops = plan(_labelled_rocky(), base)
    assert find(ops, "semanage").change == "no"
    assert find(ops, "SELinux file contexts").change == "no"


def test_a_label_that_drifted_is_restored_without_adding_the_rule_again():
    facts = with_facts(_labelled_rocky(), **_selinux(
        *ENFORCING, f"rule={RULE} system_u:object_r:bin_t:s0",
        "relabel=Would relabel /opt/deepfleet/venvs/ab/bin/python3.11 from a:b:usr_t:s0 to a:b:bin_t:s0"))
    assert find(plan(facts, base), "SELinux file contexts").shell() == [
        "test ! -d /opt/deepfleet/venvs || restorecon -R -v /opt/deepfleet/venvs"]


def test_the_site_labels_each_new_venv_after_installing_it_and_checks_the_label(wheelhouse, control_data):
    ops = plan(load_case("rocky9-8xh100"), SITE_DEPLOY, data=control_data)
    names = [op.name for op in ops]
    relabel = find(ops, "SELinux: label the new venv")
    assert names.index(find(ops, "deepfleet base | SELinux file contexts").name) < names.index(relabel.name)
    assert names.index(relabel.name) == names.index(find(ops, "Install deepfleet-runtime").name) + 1
    venv = find(ops, "Install deepfleet-runtime").shell()[0].split()[2].removesuffix("/bin/python3.11")
    assert relabel.change == "conditional"
    assert relabel.shell()[0] == f"restorecon -R -v {venv}/bin"
    assert "bin_t" in relabel.shell()[1] and "stat -c %C" in relabel.shell()[1]
    again = plan(_labelled_rocky(), SITE_DEPLOY, data=control_data, changed=[])
    assert find(again, "SELinux: label the new venv").change == "no"  # the venv did not change


@pytest.mark.parametrize(("lines", "fix"), [
    (("enforce=1", "policy=mls", "unconfined=yes"), "targeted"),
    (("enforce=1", "policy=targeted", "unconfined=no"), "semodule -e unconfined"),
])
def test_enforcing_policies_that_confine_every_service_are_refused_naming_the_fix(lines, fix):
    with pytest.raises(RoleError, match=fix):
        plan(with_facts(load_case("rocky9-8xh100"), **_selinux(*lines)), base)


@pytest.mark.parametrize("case", ["debian12-nogpu", "debian13-2xa100-stock", "ubuntu2204-2xa100",
                                  "ubuntu2404-rtx4090", "debian12-arm64-edge"])
def test_debian_and_ubuntu_without_selinux_are_untouched(case):
    ops = plan(load_case(case), base)
    assert not [name for name in changed(ops) if "SELinux" in name or "semanage" in name]
    assert "semanage" not in _commands(ops) and "restorecon" not in _commands(ops)


def test_debian_with_selinux_enforcing_is_refused_naming_the_fix():
    with pytest.raises(RoleError, match="setenforce 0"):
        plan(with_facts(load_case("debian12-nogpu"), **_selinux(*ENFORCING)), base)


def test_an_air_gapped_bundle_for_a_rhel_host_carries_semanage():
    from roles.bundle_contents import host_packages
    from roles.defaults import DEFAULTS
    from roles.hostos import HostOS

    settings = {**DEFAULTS, "bundle_host_gpu": False, "docker_enabled": False}
    assert "policycoreutils-python-utils" in host_packages(settings, HostOS("rocky", "9.4", "", "x86_64"), "h1")[0]
    assert "policycoreutils-python-utils" not in host_packages(settings, HostOS("debian", "12", "bookworm", "x86_64"),
                                                               "h1")[0]
