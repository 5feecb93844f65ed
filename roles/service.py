"""Running a role's systemd service: restart only when its inputs changed, then wait until ready."""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed


def converge_service(service: str, unit: OperationMeta, inputs: list[OperationMeta], ready_command: str) -> None:
    """Enable and start `service`; restart it and wait for `ready_command` only if `inputs` changed.

    On a converged host none of these operations changes anything, so a re-run reports zero.
    """
    systemd.daemon_reload(name=f"Reload systemd units for {service}", _if=unit.did_change)
    systemd.service(name=f"Enable and start {service}", service=f"{service}.service", running=True,
                    enabled=True)
    systemd.service(name=f"Restart {service} for new code or config", service=f"{service}.service",
                    restarted=True, _if=any_changed(unit, *inputs))
    server.shell(name=f"Wait until {service} is ready", commands=[ready_command],
                 _if=any_changed(unit, *inputs))
