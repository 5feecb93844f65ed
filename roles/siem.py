"""The siem role: every gateway's audit records forwarded to the site's SIEM by the host's rsyslog.

With `siem_syslog_target` ("host:port") set, on each gateway host:
    rsyslog + rsyslog-gnutls + logrotate         the OS's own packages (apt or dnf); logrotate rotates the
                                                 files rsyslog itself writes under /var/log (its package's
                                                 /etc/logrotate.d/rsyslog), which Debian only recommends
    /etc/deepfleet/siem-ca.pem                   the collector's CA (`siem_syslog_ca`), for TLS
    /etc/rsyslog.d/30-deepfleet-audit.conf       templates/rsyslog-deepfleet-audit.conf.j2: imfile reads the
                                                 audit files, omfwd sends RFC 5424 over TLS (RFC 5425,
                                                 octet-counted framing), the collector's name checked
rsyslog restarts only when that changed. Without a target (or on a host that no longer runs a
gateway), both files go again and rsyslog restarts. The gateway and its hash chain are untouched: rsyslog only
reads the files, and each message's structured data carries the record's seq, prev and hash, so the
SIEM side sees a gap or a reordering (docs/gateway.md, "The audit log in a SIEM").
"""

from __future__ import annotations

from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, systemd

from .common import RoleError, control_path, template
from .defaults import DEFAULTS
from .gateway import audit_dir
from .hostos import host_os
from .packages import install_packages
from .topology import runs_gateway

RSYSLOG_CONF = "/etc/rsyslog.d/30-deepfleet-audit.conf"
MAX_MESSAGE_SIZE = "2m"  # gateway_max_body_bytes (1 MiB) of prompt plus the record's own fields


def rsyslog_packages(settings: Mapping) -> list[str]:
    """The OS packages the forwarding needs (the same names on Debian, Ubuntu and RHEL 9)."""
    return ["rsyslog", "rsyslog-gnutls", "logrotate"] if settings["siem_syslog_tls"] else ["rsyslog", "logrotate"]


def siem_target(settings: Mapping) -> tuple[str, int]:
    """(host, port) of `siem_syslog_target`; RoleError naming the setting when it is no host:port."""
    target = str(settings["siem_syslog_target"])
    name, _, port = target.rpartition(":")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise RoleError(f"siem_syslog_target is {target!r}; write the collector as host:port, e.g. "
                        "\"siem.hospital.internal:6514\"")
    return name.strip("[]"), int(port)


def siem_ca_path(settings: Mapping) -> str:
    return f"{settings['deepfleet_config_dir']}/siem-ca.pem"


def rsyslog_context(settings: Mapping) -> dict:
    """Variables for templates/rsyslog-deepfleet-audit.conf.j2."""
    name, port = siem_target(settings)
    tls = bool(settings["siem_syslog_tls"])
    if tls and not settings["siem_syslog_ca"]:
        raise RoleError("siem_syslog_tls is on but siem_syslog_ca is not set: name the PEM file of the CA that "
                        "signed the collector's certificate (or set siem_syslog_tls: false for plain TCP)")
    return {"audit_dir": audit_dir(settings), "target_host": name, "target_port": port, "tls": tls,
            "peer_name": settings["siem_syslog_peer_name"] or name, "ca_file": siem_ca_path(settings),
            "sd_id": settings["siem_syslog_sd_id"], "facility": settings["siem_syslog_facility"],
            "queue_max": settings["siem_syslog_queue_max"], "max_message_size": MAX_MESSAGE_SIZE}


@deploy("Audit to the SIEM", data_defaults=DEFAULTS)
def siem_forwarding():
    """rsyslog forwarding this gateway's audit records; nothing without `siem_syslog_target`."""
    settings = {key: host.data.get(key) for key in DEFAULTS}
    if not settings["siem_syslog_target"] or not runs_gateway(host):
        _forwarding_removed(settings)
        return
    context = rsyslog_context(settings)
    os = host_os()
    install_packages("rsyslog", rsyslog_packages(settings), os)
    changes = []
    if context["tls"]:
        changes.append(files.put(name="SIEM collector's CA", src=str(control_path(settings["siem_syslog_ca"],
                                 "siem_syslog_ca")), dest=context["ca_file"], user="root", group="root", mode="0644"))
    changes.append(files.template(name="rsyslog: audit records to the SIEM", src=template(
        "rsyslog-deepfleet-audit.conf.j2"), dest=RSYSLOG_CONF, user="root", group="root", mode="0644", **context))
    systemd.service(name="rsyslog runs", service="rsyslog.service", running=True, enabled=True)
    systemd.service(name="rsyslog: restart for the new forwarding", service="rsyslog.service", restarted=True,
                    _if=lambda: any(change.did_change() for change in changes))


def _forwarding_removed(settings: Mapping) -> None:
    """The forwarding file and the collector's CA gone where an earlier deploy wrote them; rsyslog restarted."""
    present = [path for path in (RSYSLOG_CONF, siem_ca_path(settings)) if host.get_fact(File, path=path)]
    if not present:
        return
    changes = [files.file(name="rsyslog: no forwarding to the SIEM" if path == RSYSLOG_CONF
                          else "SIEM collector's CA: removed", path=path, present=False) for path in present]
    systemd.service(name="rsyslog: restart for the new forwarding", service="rsyslog.service", restarted=True,
                    _if=lambda: any(change.did_change() for change in changes))
