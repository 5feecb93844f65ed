"""The timesync role: chrony on the site's NTP servers (TLS validity and audit timestamps depend on it).

With `ntp_servers` set, chrony is installed and its configuration written whole, from
templates/chrony.conf.j2, where each OS keeps it (chrony.conf(5)): Debian/Ubuntu read
/etc/chrony/chrony.conf and name the service chrony.service, RHEL reads /etc/chrony.conf and names it
chronyd.service. The distributions' pool lines go (unreachable from an intranet): only the site's
servers are asked. Installing chrony replaces systemd-timesyncd on Debian and Ubuntu (both provide
time-daemon). chronyd restarts only when its configuration changed. Empty, time sync stays as the
host has it. deploys/verify.py reports each host's offset (roles/verify.py, the ClockOffset fact).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from .common import template
from .defaults import DEFAULTS
from .hostos import HostOS, host_os
from .packages import install_packages


CHRONY_PACKAGES = ["chrony"]


@dataclass(frozen=True)
class ChronyLayout:
    """Where one OS family keeps chrony's files, and its service's name."""

    config: str
    driftfile: str
    keyfile: str
    service: str


LAYOUTS = {"debian": ChronyLayout("/etc/chrony/chrony.conf", "/var/lib/chrony/chrony.drift",
                                  "/etc/chrony/chrony.keys", "chrony.service"),
           "rhel": ChronyLayout("/etc/chrony.conf", "/var/lib/chrony/drift", "/etc/chrony.keys",
                                "chronyd.service")}


def chrony_layout(os: HostOS) -> ChronyLayout:
    return LAYOUTS[os.family]


def chrony_context(settings: Mapping, os: HostOS) -> dict:
    """Variables for templates/chrony.conf.j2."""
    layout = chrony_layout(os)
    return {"servers": list(settings["ntp_servers"]), "driftfile": layout.driftfile, "keyfile": layout.keyfile}


@deploy("Time sync", data_defaults=DEFAULTS)
def timesync():
    """chrony pointed at `ntp_servers`; nothing when the setting is empty."""
    settings = {key: host.data.get(key) for key in DEFAULTS}
    if not settings["ntp_servers"]:
        return
    os = host_os()
    layout = chrony_layout(os)
    install_packages("Time sync", CHRONY_PACKAGES, os)
    config = files.template(name="chrony: the site's NTP servers", src=template("chrony.conf.j2"),
                            dest=layout.config, user="root", group="root", mode="0644",
                            **chrony_context(settings, os))
    systemd.service(name="chrony runs", service=layout.service, running=True, enabled=True)
    systemd.service(name="chrony: restart for its new servers", service=layout.service, restarted=True,
                    _if=config.did_change)
