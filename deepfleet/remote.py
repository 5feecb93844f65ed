"""Commands on hosts through the system's `ssh` client, logging in as pyinfra does with the same
inventory data (address, port, user, key, known_hosts, strict host key checking): one short
command per call, for the control side's fleet workflows (deepfleet/rollout.py, deepfleet/status.py)
and for streamed model pushes (roles/transfer.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping


class RemoteError(RuntimeError):
    """A host could not be reached or the command failed; the message names the host and why."""


def ssh_argv(data: Mapping, name: str) -> list[str] | None:
    """The `ssh` command line that logs into host `name` (its inventory data) as pyinfra does, or
    None where it cannot (password or passphrase logins, custom paramiko arguments, no ssh client)."""
    if data.get("ssh_password") or data.get("ssh_key_password") or data.get("ssh_paramiko_connect_kwargs") \
            or not shutil.which("ssh"):
        return None
    strict = data.get("ssh_strict_host_key_checking") or "accept-new"
    command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", f"StrictHostKeyChecking={strict}"]
    if data.get("ssh_config_file"):
        command += ["-F", data["ssh_config_file"]]
    if data.get("ssh_known_hosts_file"):
        command += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if data.get("ssh_port"):
        command += ["-p", str(data["ssh_port"])]
    if data.get("ssh_user"):
        command += ["-l", data["ssh_user"]]
    if data.get("ssh_key"):
        command += ["-i", data["ssh_key"], "-o", "IdentitiesOnly=yes"]
    elif data.get("ssh_allow_agent") is False:
        command += ["-o", "IdentityAgent=none"]
    return [*command, data.get("ssh_hostname") or name]


def run_remote(ssh: list[str], argv: list[str], sudo: bool = True, timeout: float = 120.0,
               check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `argv` on the host behind `ssh` (as root with `sudo`), with `stdin` as its input; with
    `check`, RemoteError unless it exits 0."""
    remote = shlex.join(["sudo", "-n", *argv] if sudo else argv)
    try:
        result = subprocess.run([*ssh, remote], capture_output=True, text=True, timeout=timeout, input=stdin,
                                stdin=subprocess.DEVNULL if stdin is None else None,
                                start_new_session=True)  # a Ctrl-C reaches deepfleet, not its commands
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{ssh[-1]}: `{shlex.join(argv)}` did not finish within {timeout:.0f} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-500:]
        raise RemoteError(f"{ssh[-1]}: `{shlex.join(argv)}` exited {result.returncode}: {detail}")
    return result
