"""SELinux (enforcing by default on Rocky/RHEL 9): deepfleet's services must start under it.

What Red Hat's "Using SELinux" (RHEL 9) prescribes, for the targeted policy:

- systemd (init_t) runs a service whose executable is an entrypoint of `unconfined_service_t`
  (bin_t, usr_t, shell_exec_t) in that domain, which is unconfined: it reads its config (etc_t),
  writes its state (var_lib_t) and binds any port, so no `semanage port` rule is needed for the
  gateway, runtime or Ray ports (a confined domain such as httpd_t would need one).
- The executables systemd starts are the venvs' (`<deepfleet_home>/venvs/<id>/bin`, the units'
  ExecStart through `<home>/venv` and `releases/current/venv`). They get a local file-context rule
  `semanage fcontext -a -t bin_t '<home>/venvs/[^/]+/bin(/.*)?'` (policycoreutils-python-utils
  brings semanage), applied with `restorecon -R`: the type Red Hat gives executables, so the
  services start wherever deepfleet_home lies (under /srv or /home the default types var_t and
  user_home_t are no entrypoint: systemd fails with status 203/EXEC).
- A venv is created by pip after that (new files take their directory's type, not the rule's), so
  the runtime role relabels each new venv's bin/ once it was installed, and checks the label: a
  filesystem without SELinux labels (NFS, a `context=` mount) stops the deploy with the fix.

Idempotent: rules already listed by `semanage fcontext -l -C` are not added again, and restorecon
runs only where `restorecon -n -v` says a label would change (or a rule was just added).
Permissive hosts are labelled too, so switching to enforcing later does not stop the services.
Where an enforcing policy confines every service (not `targeted`, or its `unconfined` module
disabled) nothing here could make the services start: the plan stops, naming the fix.

    SelinuxState   {"mode": "enforcing"|"permissive"|"disabled", "policy": "targeted", "unconfined":
                    the unconfined module is enabled, "rules": {regex: type} local file contexts,
                    "relabel": [paths under <home>/venvs whose label restorecon would change]}
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from .common import RoleError
from .hostos import HostOS
from .packages import dnf_install

SEMANAGE_PACKAGE = "policycoreutils-python-utils"
EXECUTABLE_TYPE = "bin_t"
_MODES = {"1": "enforcing", "0": "permissive"}
_WOULD_RELABEL = re.compile(r"^Would relabel (.+) from \S+ to \S+$")


class SelinuxState(FactBase):
    """SELinux's mode (/sys/fs/selinux/enforce; absent: disabled), its loaded policy, whether the
    unconfined module is enabled, the local file-context rules, and the labels restorecon would
    change under `<home>/venvs`."""

    def command(self, home: str) -> str:
        venvs = shlex.quote(f"{home}/venvs")
        return ("if [ -e /sys/fs/selinux/enforce ]; then "
                'echo "enforce=$(cat /sys/fs/selinux/enforce)"; '
                "echo \"policy=$(sestatus 2>/dev/null | sed -n 's/^Loaded policy name: *//p')\"; "
                "if semodule -l 2>/dev/null | grep -qx unconfined; then echo unconfined=yes; "
                "else echo unconfined=no; fi; "
                "semanage fcontext -l -C 2>/dev/null | awk 'NF >= 3 && $NF ~ /:/ {print \"rule=\" $1 \" \" $NF}'; "
                f"if [ -d {venvs} ]; then restorecon -R -n -v {venvs} 2>/dev/null | sed 's/^/relabel=/'; fi; "
                "else echo enforce=disabled; fi")

    @staticmethod
    def default() -> dict:
        return {"mode": "disabled", "policy": "", "unconfined": False, "rules": {}, "relabel": []}

    def process(self, output):
        state = self.default()
        for line in output:
            key, _, value = line.strip().partition("=")
            if key == "enforce":
                state["mode"] = _MODES.get(value.strip(), "disabled")
            elif key == "policy":
                state["policy"] = value.strip()
            elif key == "unconfined":
                state["unconfined"] = value.strip() == "yes"
            elif key == "rule" and " " in value:
                regex, context = value.rsplit(" ", 1)
                parts = context.split(":")
                if len(parts) >= 3:
                    state["rules"][regex] = parts[2]
            elif key == "relabel":  # "Would relabel PATH from CONTEXT to CONTEXT"
                found = _WOULD_RELABEL.match(value.strip())
                if found:
                    state["relabel"].append(found.group(1))
        return state


def selinux_state() -> dict:
    return host.get_fact(SelinuxState, home=host.data.deepfleet_home)


def file_contexts(home: str) -> dict[str, str]:
    """deepfleet's local file-context rules: {regex: type}."""
    return {f"{home}/venvs/[^/]+/bin(/.*)?": EXECUTABLE_TYPE}


def labels_apply(os: HostOS) -> bool:
    """Whether this host's files get deepfleet's SELinux labels; RoleError where SELinux enforces a
    policy under which deepfleet's services cannot run, naming the fix."""
    state = selinux_state()
    if state["mode"] == "disabled":
        return False
    if os.family != "rhel":
        if state["mode"] == "enforcing":
            raise RoleError(f"host {host.name} ({os.label}) runs SELinux enforcing; deepfleet labels its files for "
                            "Red Hat's targeted policy only (Rocky/RHEL/AlmaLinux 9). Set it permissive "
                            "(`setenforce 0`, and SELINUX=permissive in /etc/selinux/config), or label "
                            "<deepfleet_home>/venvs/*/bin for your policy yourself")
        return False
    if state["mode"] == "enforcing" and state["policy"] != "targeted":
        raise RoleError(f"host {host.name} enforces the SELinux policy {state['policy'] or '(unknown)'}, which "
                        "confines every service; deepfleet's run unconfined (unconfined_service_t) under the "
                        "targeted policy: set SELINUXTYPE=targeted in /etc/selinux/config and reboot, or write a "
                        "policy module for deepfleet-runtime and deepfleet-gateway")
    if state["mode"] == "enforcing" and not state["unconfined"]:
        raise RoleError(f"host {host.name} enforces SELinux with the unconfined module disabled, so systemd "
                        "cannot start deepfleet's services (they run as unconfined_service_t): "
                        "`semodule -e unconfined`, or write a policy module for deepfleet-runtime and "
                        "deepfleet-gateway")
    return state["policy"] == "targeted"  # permissive under another policy: its rules are not ours to guess


def selinux_labels(os: HostOS) -> None:
    """The base role's part: semanage installed, deepfleet's file-context rules, labels restored."""
    if not labels_apply(os):
        return
    dnf_install(name=f"SELinux: semanage ({SEMANAGE_PACKAGE})", packages=[SEMANAGE_PACKAGE])
    home = host.data.deepfleet_home
    label_files(name="SELinux file contexts (bin_t for the venvs' executables)", rules=file_contexts(home),
                root=f"{home}/venvs")


@operation()
def label_files(rules: dict[str, str], root: str):
    """
    Add (or correct) local SELinux file-context rules, then restorecon `root` where a rule was added
    or a label differs from its rule.

    + rules: {regex: type}, e.g. {"/opt/deepfleet/venvs/[^/]+/bin(/.*)?": "bin_t"}
    + root: the directory those rules cover (relabelled recursively, if it exists)
    """
    state = selinux_state()
    wrong = {regex: kind for regex, kind in rules.items() if state["rules"].get(regex) != kind}
    if not wrong and not state["relabel"]:
        host.noop(f"SELinux labels in place: {', '.join(f'{kind} {regex}' for regex, kind in rules.items())}")
        return
    for regex, kind in wrong.items():
        verb = "-m" if regex in state["rules"] else "-a"
        yield StringCommand("semanage", "fcontext", verb, "-t", kind, QuoteString(regex))
    yield StringCommand("test", "!", "-d", QuoteString(root), "||", "restorecon", "-R", "-v", QuoteString(root))


def relabel_venv(os: HostOS, venv: str, install: OperationMeta) -> None:
    """The runtime role's part: label a venv pip just created (its files took usr_t, or whatever the
    directory has), then check that the label took, naming the fix where it cannot."""
    if not labels_apply(os):
        return
    executable = f"{venv}/bin/deepfleet-runtime"
    fix = (f"{executable} is not labelled {EXECUTABLE_TYPE} after restorecon, so systemd cannot start it under "
           "SELinux: deepfleet_home is on a filesystem without SELinux labels (NFS, or mounted with context=); "
           f"move deepfleet_home to a local filesystem, or mount it with context=system_u:object_r:{EXECUTABLE_TYPE}:s0")
    check = (f"test \"$(stat -c %C {shlex.quote(executable)} | cut -d: -f3)\" = {EXECUTABLE_TYPE} || "
             f"{{ echo {shlex.quote(fix)} >&2; exit 1; }}")
    server.shell(name="SELinux: label the new venv's executables bin_t",
                 commands=[f"restorecon -R -v {shlex.quote(venv + '/bin')}", check], _if=install.did_change)
