"""The logs role: journald's limits, so that logs never fill a host's disk.

Every deepfleet service (runtime, gateway, Ray, the vLLM child) logs to stdout and stderr, which
systemd hands to journald; none writes log files of its own, so journald's limits are the
retention of the runtime's logs (Docker mode: the json-file rotation of daemon.json,
`docker_log_max_size` x `docker_log_max_file`). The audit log is no log: it is the gateway's
hash-chained record, kept by `gateway_audit_retention_days` and watched by the
DeepfleetAuditDisk* alerts.

    /etc/systemd/journald.conf.d/60-deepfleet.conf   [Journal] SystemMaxUse=, SystemKeepFree=, MaxRetentionSec=
                                                     (journald.conf(5)); journald restarts only when it changed
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, systemd

from .defaults import DEFAULTS

JOURNALD_DROPIN = "/etc/systemd/journald.conf.d/60-deepfleet.conf"
_KEYS = (("SystemMaxUse", "logs_journald_max_use"), ("SystemKeepFree", "logs_journald_keep_free"),
         ("MaxRetentionSec", "logs_journald_max_retention"))


def journald_conf(settings: Mapping) -> str | None:
    """The drop-in's text, or None when every limit is left to journald's defaults."""
    lines = [f"{key}={settings[name]}" for key, name in _KEYS if settings[name] is not None]
    if not lines:
        return None
    return "# Written by deepfleet (roles/logs.py): the journal's limits. Edits are overwritten.\n[Journal]\n" \
        + "\n".join(lines) + "\n"


@deploy("Log limits", data_defaults=DEFAULTS)
def journald_limits():
    """journald's size and age limits from the logs_* settings; journald restarts when they change."""
    text = journald_conf({key: host.data.get(key) for key in DEFAULTS})
    if text:
        changed = files.put(name="journald: limits", src=io.StringIO(text), dest=JOURNALD_DROPIN, user="root",
                            group="root", mode="0644")
    elif host.get_fact(File, path=JOURNALD_DROPIN):
        changed = files.file(name="journald: its own defaults", path=JOURNALD_DROPIN, present=False)
    else:
        return
    systemd.service(name="journald: restart for its new limits", service="systemd-journald.service",
                    restarted=True, _if=changed.did_change)
